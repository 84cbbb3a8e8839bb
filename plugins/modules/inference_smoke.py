#!/usr/bin/python
# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: inference_smoke
short_description: Quality smoke test of an OpenAI-compatible inference engine before it takes traffic
description:
  - Sends a small prompt set to one engine (vLLM, or any OpenAI-compatible server) and fails at the first answer that
    lacks a property it must have. C(playbooks/rolling_update.yml) runs it on a host that was just updated, while the
    host is still out of the balancer's rotation.
  - "Checked for every prompt: the model is listed by V(/v1/models); the answer has the OpenAI shape; its
    C(finish_reason) is V(stop) or V(length); its C(usage.completion_tokens) lies between O(prompts[].min_tokens) and
    O(prompts[].max_tokens); its text matches O(prompts[].expect) when given. With O(prompts[].repeat) the prompt is
    sent twice at temperature 0 and both texts must be equal. With O(prompts[].stream) the answer is streamed and the
    event stream must end with C([DONE]) and carry its usage."
  - All prompts are sent at temperature 0. Only reads; in check mode it does nothing and reports so.
version_added: 0.1.0
author: enclave.llm maintainers (@enclave-llm)
extends_documentation_fragment:
  - enclave.llm.rest
  - enclave.llm.attributes
  - enclave.llm.attributes.INFO_MODULE
options:
  model:
    description: The served model name clients put in C(model).
    type: str
    required: true
  prompts:
    description:
      - The prompt set. The default is three prompts (a repeated completion, a chat completion and a streamed
        completion) that check shape and behaviour only; give O(prompts[].expect) for answers your model must give.
    type: list
    elements: dict
    suboptions:
      prompt:
        description: The prompt (the user message for V(chat)).
        type: str
        required: true
      max_tokens:
        description: Most tokens the answer may have; sent as C(max_tokens).
        type: int
        default: 16
      min_tokens:
        description: Fewest tokens the answer must have.
        type: int
        default: 1
      expect:
        description: Regular expression the answer's text must match (Python C(re.search)); empty checks nothing.
        type: str
        default: ""
      chat:
        description: Send to C(/v1/chat/completions) instead of C(/v1/completions).
        type: bool
        default: false
      stream:
        description: Stream the answer (server-sent events with usage).
        type: bool
        default: false
      repeat:
        description: Send the prompt twice and require the same text (not with O(prompts[].stream)).
        type: bool
        default: false
"""

EXAMPLES = r"""
- name: Smoke-test tiny-llama on this host before it goes back into rotation
  enclave.llm.inference_smoke:
    url: http://10.231.30.11:8000
    model: tiny-llama
    token_file: /etc/vllm/api-key

- name: Require answers the production model must give
  enclave.llm.inference_smoke:
    url: http://10.231.30.11:8000
    model: llama-3.1-8b-instruct
    token_file: /etc/vllm/api-key
    prompts:
      - {prompt: "What is the capital of France? Answer in one word.", chat: true, max_tokens: 8, expect: "(?i)paris"}
      - {prompt: "2 + 2 =", max_tokens: 4, expect: "4", repeat: true}
      - {prompt: "Write a haiku about autumn.", chat: true, max_tokens: 64, min_tokens: 8, stream: true}
"""

RETURN = r"""
passed:
  description: Whether every prompt passed (false only in check mode).
  returned: always
  type: bool
  sample: true
results:
  description: One entry per prompt, in order.
  returned: success
  type: list
  elements: dict
  sample:
    - {prompt: "The capital of France is", completion_tokens: 8, finish_reason: length, seconds: 0.12,
       stream: false, chat: false}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.enclave.llm.plugins.module_utils import inference_smoke as smoke
from ansible_collections.enclave.llm.plugins.module_utils import rest


def argument_spec() -> dict:
    spec = rest.common_argument_spec()
    spec.update(
        model={"type": "str", "required": True},
        prompts={"type": "list", "elements": "dict", "options": {
            "prompt": {"type": "str", "required": True},
            "max_tokens": {"type": "int", "default": 16, "no_log": False},
            "min_tokens": {"type": "int", "default": 1, "no_log": False},
            "expect": {"type": "str", "default": ""},
            "chat": {"type": "bool", "default": False},
            "stream": {"type": "bool", "default": False},
            "repeat": {"type": "bool", "default": False},
        }},
    )
    return spec


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    if module.check_mode:
        module.exit_json(changed=False, passed=False, msg="check mode: the smoke test was not run")
    try:
        prompts = smoke.normalise(params["prompts"] or smoke.DEFAULT_PROMPTS)
    except ValueError as exc:
        module.fail_json(msg=f"{exc}; fix prompts")
    try:
        token = rest.read_token(params["token_file"])
    except rest.HttpError as exc:
        module.fail_json(msg=f"{exc}; fix token_file")
    runner = smoke.Smoke(params["url"], params["model"], token=token, ca_path=params["ca_path"],
                         validate_certs=params["validate_certs"], timeout=params["timeout"])
    try:
        results = runner.run(prompts)
    except smoke.SmokeFailed as exc:
        module.fail_json(msg=f"{params['model']} at {params['url']} failed the smoke test: {exc}", passed=False)
    module.exit_json(changed=False, passed=True, results=results)


if __name__ == "__main__":
    main()

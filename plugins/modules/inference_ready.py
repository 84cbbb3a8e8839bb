#!/usr/bin/python
# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
from __future__ import annotations

DOCUMENTATION = r"""
---
module: inference_ready
short_description: Wait until an inference engine answers a real one-token completion
description:
  - The readiness gate of the C(vllm) and C(ollama) roles, run after a (re)start and before the role reports done.
  - Polls the engine's health endpoint (V(/health) for the OpenAI-compatible vLLM server, V(/) for Ollama) until it
    answers, then sends one completion of one token for O(model) (C(/v1/completions) or C(/api/generate)) and checks
    the answer's shape and token count. For Ollama this also loads the model into memory (the preload).
  - One deadline, O(wait_timeout), covers both steps; when it passes the module fails naming the step that was
    still failing and its last error. A refused API key or an unknown model fails at once.
  - Only reads; in check mode it does nothing and reports so.
version_added: 0.1.0
author: enclave.llm maintainers (@enclave-llm)
extends_documentation_fragment:
  - enclave.llm.rest
  - enclave.llm.attributes
  - enclave.llm.attributes.INFO_MODULE
options:
  model:
    description:
      - The served model name clients put in C(model).
      - Without it only the health endpoint is waited for (an Ollama server before its models are pulled).
    type: str
  engine:
    description: V(openai) for vLLM (and any OpenAI-compatible server), V(ollama) for Ollama's native API.
    type: str
    choices: [openai, ollama]
    default: openai
  wait_timeout:
    description: Seconds the whole gate may take, from the first health probe to the completion.
    type: float
    default: 600
  interval:
    description: Seconds between attempts.
    type: float
    default: 2
  health_path:
    description: Health endpoint; empty means the engine's own (V(/health) or V(/)).
    type: str
    default: ""
  prompt:
    description: Prompt of the one-token completion.
    type: str
    default: Hello
"""

EXAMPLES = r"""
- name: Wait until vLLM serves tiny-llama
  enclave.llm.inference_ready:
    url: http://10.231.30.11:8000
    model: tiny-llama
    token_file: /etc/vllm/api-key
    wait_timeout: 900

- name: Wait until Ollama answers and has llama3.2 loaded
  enclave.llm.inference_ready:
    url: http://10.231.30.12:11434
    engine: ollama
    model: llama3.2:1b
"""

RETURN = r"""
ready:
  description: Whether the engine answered the completion (false only in check mode).
  returned: always
  type: bool
  sample: true
attempts:
  description: Requests made, health probes and completion together.
  returned: success
  type: int
  sample: 41
health_s:
  description: Seconds until the health endpoint answered.
  returned: success
  type: float
  sample: 78.2
ready_s:
  description: Seconds until the completion answered.
  returned: success
  type: float
  sample: 79.0
completion_s:
  description: Seconds the one-token completion took.
  returned: success and O(model) given
  type: float
  sample: 0.21
completion_tokens:
  description: Tokens the completion generated.
  returned: success and O(model) given
  type: int
  sample: 1
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.enclave.llm.plugins.module_utils import inference_ready as ir
from ansible_collections.enclave.llm.plugins.module_utils import rest


def argument_spec() -> dict:
    spec = rest.common_argument_spec()
    spec.update(
        model={"type": "str"},
        engine={"type": "str", "choices": list(ir.ENGINES), "default": "openai"},
        wait_timeout={"type": "float", "default": 600},
        interval={"type": "float", "default": 2},
        health_path={"type": "str", "default": ""},
        prompt={"type": "str", "default": "Hello"},
    )
    return spec


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    if module.check_mode:
        module.exit_json(changed=False, ready=False, msg="check mode: the readiness gate was not run")
    if params["wait_timeout"] <= 0 or params["interval"] <= 0:
        module.fail_json(msg="wait_timeout and interval must be positive numbers of seconds")
    try:
        token = rest.read_token(params["token_file"])
    except rest.HttpError as exc:
        module.fail_json(msg=f"{exc}; fix token_file")
    gate = ir.Gate(url=params["url"], model=params["model"], engine=params["engine"], token=token,
                   ca_path=params["ca_path"], validate_certs=params["validate_certs"],
                   request_timeout=params["timeout"], wait_timeout=params["wait_timeout"],
                   interval=params["interval"], health_path=params["health_path"], prompt=params["prompt"])
    try:
        result = gate.wait()
    except ir.NotReady as exc:
        module.fail_json(msg=str(exc), ready=False, **exc.details)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()

#!/usr/bin/python
# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
from __future__ import annotations

DOCUMENTATION = r"""
module: model_pull
short_description: Bring model weights into a model store, verified by sha256, also air-gapped
version_added: 0.1.0
author: enclave.llm maintainers (@enclave-llm)
description:
  - Fetches the files of a model into O(dest) on the target from a Hugging Face-style hub (the public Hub or an
    internal mirror of it), an HTTP(S) artifact mirror described by a manifest, or a local or NFS directory; or has
    an Ollama server pull a model through its C(/api/pull).
  - Files are written to C(<dest>/.model_pull.partial/) (same filesystem) and renamed into place only after every
    file has verified. A checksum mismatch names the file, the expected and the actual digest, and leaves nothing in
    place.
  - An interrupted download resumes with an HTTP Range request on the next attempt (O(retries)) or the next run.
  - Files the store already holds verified are not fetched again (C(changed=false)). The size, mtime, inode and
    digest of each file verified are recorded outside the model directory, in C(<state_dir>/<sha256 of dest>.json)
    (see O(state_dir)), so later runs do not re-read the weights; a file whose size or mtime changed is hashed again,
    and O(reverify=true) hashes all. A C(<dest>/.model_pull.json) that earlier versions kept is still read when
    O(state_dir) holds no record for O(dest); it is no longer written.
  - Verifying writes nothing into O(dest), so a read-only model store (an NFS export mounted read-only on an
    inference host) whose files are all there and verify gives C(changed=false). When files are missing or differ
    there, the module fails before fetching anything, naming the files, the read-only or unwritable directory and
    the fix (fill the store where it is writable, or point O(dest) at a writable directory); check mode fails the
    same way, since the run would.
  - Refuses to start when the filesystem of O(dest) has less free space than the bytes still to fetch plus
    O(disk_margin_mib).
  - Hugging Face files stored with LFS are verified by their sha256; small files kept in git by their git blob id
    (sha1 of the git object), which is what the hub publishes for them. Pin sha256 values with O(checksums) to trust
    nothing the source says.
  - The token of O(token_file) is sent only to the host of O(url), never to a storage host a redirect points at.
extends_documentation_fragment:
  - enclave.llm.attributes
  - enclave.llm.rest
attributes:
  check_mode:
    support: full
    details:
      - Lists the source and the store and reports what would be fetched; writes nothing.
  diff_mode:
    support: full
    details:
      - Before and after are the lists of files (or the Ollama model digest).
  idempotent:
    support: full
options:
  source:
    description:
      - Where the model comes from.
      - V(huggingface) needs O(url), O(repo) and O(revision); V(http) needs O(url) and O(manifest); V(path) needs
        O(src); V(ollama) needs O(url) (the Ollama server) and O(model).
    type: str
    required: true
    choices: [huggingface, http, path, ollama]
  url:
    description:
      - The hub endpoint (for example an internal mirror, V(https://hf-mirror.example.internal)), the base URL of
        the artifact mirror directory, or the Ollama server (V(http://127.0.0.1:11434)).
      - Not used with O(source=path).
    type: str
    required: false
  dest:
    description:
      - Directory of the model in the store on the target; created when missing. Files land at their relative
        paths below it. Required except with O(source=ollama), where Ollama keeps its own store.
    type: path
  repo:
    description: Repository id on the hub, for example V(meta-llama/Llama-3.1-8B-Instruct).
    type: str
  revision:
    description:
      - Commit, branch or tag to fetch. Pin a commit (40 hex digits) for reproducible deployments; the commit it
        resolved to is returned as RV(revision).
    type: str
  allow_patterns:
    description:
      - Glob patterns (C(fnmatch), matched against the relative path) of the files to fetch; all files when empty.
      - For example V(['*.json', '*.safetensors', 'tokenizer*']).
    type: list
    elements: str
    default: []
  manifest:
    description:
      - With O(source=http), required; with O(source=path), optional. Either a list of V({path, sha256, size}) entries,
        or the name of a manifest file relative to O(url) or O(src).
      - A manifest file is JSON, an object whose C(files) list holds entries with C(path), C(sha256) and optional
        C(size) (or that list alone), or C(sha256sum) output (one C(<sha256>  <path>) per line).
      - Without a manifest a path source is copied as it is, and each copy is re-read and compared with the sha256 of
        the bytes read from the source before it is put in place.
    type: raw
  src:
    description: With O(source=path), the directory on the target (local disk or an NFS mount) holding the files.
    type: path
  checksums:
    description:
      - Pinned sha256 values by relative path. They must agree with what the source lists, and files are verified
        against them.
    type: dict
    default: {}
  model:
    description: With O(source=ollama), the model to pull, for example V(llama3.2:1b); a bare name means V(:latest).
    type: str
  digest:
    description:
      - With O(source=ollama), the expected model digest as C(/api/tags) reports it. A model present with another
        digest is pulled again; a pull that ends with another digest fails and the model is removed.
    type: str
  insecure_registry:
    description: With O(source=ollama), let Ollama pull from a registry over plain HTTP or with an unverified certificate.
    type: bool
    default: false
  disk_margin_mib:
    description: MiB that must stay free on the filesystem of O(dest) beyond the bytes still to fetch.
    type: int
    default: 1024
  retries:
    description: How many times a broken or stalled transfer of one file is resumed before the module gives up.
    type: int
    default: 3
  reverify:
    description: Hash every file in the store again, even those whose size, mtime and inode match the record.
    type: bool
    default: false
  state_dir:
    description:
      - Directory on the target for the records of verified files, one file per O(dest) named by the sha256 of its
        absolute path. Created when missing; kept outside the model store so that a read-only store can be
        verified.
      - When it cannot be written the run still succeeds with a warning, and the next run hashes the files again.
    type: path
    default: /var/lib/enclave-llm/model_pull
notes:
  - A pull of hundreds of gigabytes can outlast the default task timeout of some controllers; run it with C(async).
  - Files in O(dest) that the source does not list are left alone.
  - With O(source=ollama), the disk space check and the verification of each layer's sha256 are Ollama's own.
seealso:
  - module: enclave.llm.gpu_facts
"""

EXAMPLES = r"""
- name: Llama 3.1 8B from the internal Hugging Face mirror, pinned to a commit
  enclave.llm.model_pull:
    source: huggingface
    url: https://hf-mirror.example.internal
    repo: meta-llama/Llama-3.1-8B-Instruct
    revision: 0e9e39f249a16976918f6564b8830bc894c89659
    allow_patterns: ["*.json", "*.safetensors", "tokenizer*"]
    token_file: /etc/enclave/hf-token
    ca_path: /etc/enclave/pki/ca.crt
    dest: /srv/models/llama-3.1-8b-instruct
  async: 7200
  poll: 30

- name: A model from the artifact mirror, with its manifest
  enclave.llm.model_pull:
    source: http
    url: https://artifacts.example.internal/models/tiny-llama/
    manifest: SHA256SUMS
    dest: /srv/models/tiny-llama

- name: A model from the NFS model share, checked against pinned digests
  enclave.llm.model_pull:
    source: path
    src: /mnt/models/tiny-llama
    manifest:
      - path: model.safetensors
        sha256: 9c2b7c4e5d1f0a3b8e6d4c2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e
        size: 2200119864
    dest: /srv/models/tiny-llama

- name: Verify a model on the read-only NFS model store against the mirror's manifest (writes nothing there)
  enclave.llm.model_pull:
    source: http
    url: https://artifacts.example.internal/models/tiny-llama/
    manifest: SHA256SUMS
    dest: /mnt/models/tiny-llama
    state_dir: /var/lib/enclave-llm/model_pull

- name: A model into the local Ollama server
  enclave.llm.model_pull:
    source: ollama
    url: http://127.0.0.1:11434
    model: llama3.2:1b
"""

RETURN = r"""
source:
  description: The source kind used.
  returned: always
  type: str
  sample: huggingface
dest:
  description: The model directory.
  returned: when O(source) is not V(ollama)
  type: str
  sample: /srv/models/llama-3.1-8b-instruct
state_file:
  description: The record of the files verified in O(dest), in O(state_dir).
  returned: when O(source) is not V(ollama)
  type: str
  sample: /var/lib/enclave-llm/model_pull/3f0c9a4e1b7d2c6a8e5f4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a.json
revision:
  description: The commit the hub resolved O(revision) to.
  returned: when O(source=huggingface)
  type: str
  sample: 0e9e39f249a16976918f6564b8830bc894c89659
files:
  description: Every file of the model with its size, digest and what this run did with it.
  returned: when O(source) is not V(ollama)
  type: list
  elements: dict
  contains:
    path:
      description: Path relative to O(dest).
      type: str
    size:
      description: Size in bytes.
      type: int
    sha256:
      description: The sha256 the file was verified against, when known.
      type: str
    git_oid:
      description: The git blob id a hub file kept in git (not LFS) was verified against.
      type: str
    status:
      description: V(present) (already verified), V(downloaded), V(resumed), V(copied), or V(missing) in check mode.
      type: str
  sample:
    - {path: config.json, size: 826, sha256: null, git_oid: 2c6fe4d4b6c5ad1e1c2a8c0b3a44d6e0d9c2f0a1, status: present}
bytes:
  description: Bytes transferred by this run (for Ollama, as its progress reported them).
  returned: always
  type: int
  sample: 16060522496
bytes_total:
  description: Size of all the model's files in bytes.
  returned: when O(source) is not V(ollama)
  type: int
  sample: 16060556376
bytes_needed:
  description: Bytes that were still to fetch when the run started (after counting resumable partial files).
  returned: when files were missing
  type: int
duration_s:
  description: Wall time of the run in seconds.
  returned: always
  type: float
  sample: 152.4
throughput_bytes_per_s:
  description: RV(bytes) divided by RV(duration_s).
  returned: always
  type: int
  sample: 105384021
model:
  description: The Ollama model name, normalised (V(name:tag)).
  returned: when O(source=ollama)
  type: str
  sample: llama3.2:1b
digest:
  description: The Ollama model digest after the run.
  returned: when O(source=ollama)
  type: str
size:
  description: Size of the Ollama model in bytes, as C(/api/tags) reports it.
  returned: when O(source=ollama)
  type: int
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.enclave.llm.plugins.module_utils import model_pull as mp
from ansible_collections.enclave.llm.plugins.module_utils import rest


def argument_spec() -> dict:
    spec = rest.common_argument_spec()
    spec["url"] = {"type": "str"}
    spec.update(
        source={"type": "str", "required": True, "choices": ["huggingface", "http", "path", "ollama"]},
        dest={"type": "path"},
        repo={"type": "str"},
        revision={"type": "str"},
        allow_patterns={"type": "list", "elements": "str", "default": []},
        manifest={"type": "raw"},
        src={"type": "path"},
        checksums={"type": "dict", "default": {}},
        model={"type": "str"},
        digest={"type": "str"},
        insecure_registry={"type": "bool", "default": False},
        disk_margin_mib={"type": "int", "default": 1024},
        retries={"type": "int", "default": 3},
        reverify={"type": "bool", "default": False},
        state_dir={"type": "path", "default": mp.DEFAULT_STATE_DIR},
    )
    return spec


def run(module: AnsibleModule) -> dict:
    params = module.params
    source_kind = params["source"]
    try:
        token = rest.read_token(params["token_file"])
    except rest.HttpError as exc:
        raise mp.PullError(f"{exc}; fix token_file") from exc
    if params["disk_margin_mib"] < 0 or params["retries"] < 0:
        raise mp.PullError("disk_margin_mib and retries must not be negative")
    opts = mp.Options(
        dest=params["dest"] or "", ca_path=params["ca_path"], validate_certs=params["validate_certs"],
        timeout=params["timeout"], token=token, allow_patterns=params["allow_patterns"],
        checksums=params["checksums"], disk_margin_bytes=params["disk_margin_mib"] * mp.MIB,
        retries=params["retries"], reverify=params["reverify"], check_mode=module.check_mode,
        state_dir=params["state_dir"])
    if source_kind == "ollama":
        return mp.pull_ollama(params["url"], params["model"], opts, digest=params["digest"],
                              insecure=params["insecure_registry"])
    manifest = params["manifest"]
    if manifest is not None and not isinstance(manifest, (list, str)):
        raise mp.PullError("manifest must be a list of {path, sha256, size} or the name of a manifest file")
    if source_kind == "huggingface":
        source: mp.Source = mp.HuggingFaceSource(opts, params["url"], params["repo"], params["revision"])
    elif source_kind == "http":
        source = mp.MirrorSource(opts, params["url"], manifest)
    else:
        source = mp.PathSource(opts, params["src"], manifest)
    return mp.pull_files(source, opts)


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        required_if=[
            ("source", "huggingface", ("url", "repo", "revision", "dest")),
            ("source", "http", ("url", "manifest", "dest")),
            ("source", "path", ("src", "dest")),
            ("source", "ollama", ("url", "model")),
        ],
    )
    try:
        result = run(module)
    except mp.PullError as exc:
        module.fail_json(msg=str(exc), **exc.details)
    if not module._diff:
        result.pop("diff", None)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

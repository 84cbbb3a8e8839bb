"""model_pull's logic against real HTTP on loopback.

The hub is tests/doubles/model_server.py (a TEST DOUBLE of the Hugging Face hub's
HTTP shape: Hugging Face is unreachable here); the artifact mirror is a real file
server with injected faults; Ollama is tests/doubles/ollama_double.py (a TEST
DOUBLE of the Ollama protocol). Files are real bytes on a real filesystem.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from types import SimpleNamespace

import pytest

import model_server
import ollama_double
from ansible_collections.enclave.llm.plugins.module_utils import model_pull as mp

WEIGHTS = bytes(range(256)) * 1200          # 300 KiB: stored with LFS by the double
SHARD2 = os.urandom(200_000)
CONFIG = b'{"architectures": ["LlamaForCausalLM"], "hidden_size": 64}\n'
TOKENIZER = b'{"version": "1.0"}\n'


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def hub():
    server = model_server.ModelServer(lfs_threshold=1024).start()
    server.add_repo("acme/tiny", {"config.json": CONFIG, "tokenizer.json": TOKENIZER,
                                  "model-00001-of-00002.safetensors": WEIGHTS,
                                  "model-00002-of-00002.safetensors": SHARD2,
                                  "original/params.json": b"{}\n"})
    yield server
    server.stop()


def options(dest, **kwargs) -> mp.Options:
    kwargs.setdefault("disk_margin_bytes", 0)
    kwargs.setdefault("timeout", 5)
    # Beside dest, never the host's /var/lib/enclave-llm.
    kwargs.setdefault("state_dir", os.path.join(os.path.dirname(str(dest)), "pull-state"))
    return mp.Options(dest=str(dest), **kwargs)


def hf(server, dest, revision="main", repo="acme/tiny", **kwargs):
    opts = options(dest, **kwargs)
    return mp.pull_files(mp.HuggingFaceSource(opts, server.url, repo, revision), opts)


def store_files(dest) -> dict[str, bytes]:
    found = {}
    for root, _dirs, names in os.walk(dest):
        for name in names:
            full = os.path.join(root, name)
            found[os.path.relpath(full, dest)] = open(full, "rb").read()
    return found


# ------------------------------------------------------------------ helpers
@pytest.mark.parametrize("path", ["config.json", "a/b/c.bin", "./x.json", "dir//y"])
def test_safe_relative_paths_pass(path):
    assert not mp.safe_relative_path(path).startswith("/")


@pytest.mark.parametrize("path,fragment", [
    ("/etc/passwd", "outside dest"), ("../up", "outside dest"), ("a/../../b", "outside dest"), ("..", "outside dest"),
    ("", "empty"), (None, "empty"), (".model_pull.json", "reserved"), (".model_pull.partial/x", "reserved"),
])
def test_unsafe_paths_are_refused(path, fragment):
    with pytest.raises(mp.PullError, match=fragment):
        mp.safe_relative_path(path)


def test_manifest_formats():
    digest = sha(b"x")
    assert mp.parse_manifest(f"{digest}  a.bin\n# comment\n{digest} *b/c.bin\n", "m") == [
        {"sha256": digest, "path": "a.bin"}, {"sha256": digest, "path": "b/c.bin"}]
    assert mp.parse_manifest(json.dumps({"files": [{"path": "a", "sha256": digest}]}), "m") == [
        {"path": "a", "sha256": digest}]
    assert mp.parse_manifest(json.dumps([{"path": "a", "sha256": digest}]), "m")[0]["path"] == "a"
    with pytest.raises(mp.PullError, match="line 1"):
        mp.parse_manifest("not a manifest\n", "m")
    with pytest.raises(mp.PullError, match="not valid JSON"):
        mp.parse_manifest("{broken", "m")


@pytest.mark.parametrize("entry,fragment", [
    ({"path": "a", "sha256": "abc"}, "no valid sha256"),
    ({"path": "a"}, "no valid sha256"),
    ({"sha256": "0" * 64}, "without a path"),
    ({"path": "a", "sha256": "0" * 64, "size": -1}, "invalid size"),
])
def test_manifest_entries_are_validated(entry, fragment):
    with pytest.raises(mp.PullError, match=fragment):
        mp.manifest_files([entry], "m", lambda p: p)


def test_git_blob_id_matches_git():
    # `printf 'hello\n' | git hash-object --stdin`
    remote = mp.RemoteFile("f", size=6, git_oid="ce013625030ba8dba906f756967f9e9ca394464a")
    digest = mp.Digest(6, want_git=True)
    digest.update(b"hello\n")
    assert digest.matches(remote) == (True, "git-blob-sha1:ce013625030ba8dba906f756967f9e9ca394464a")


def test_pinned_checksums_must_agree_with_the_source():
    files = [mp.RemoteFile("a", sha256="1" * 64), mp.RemoteFile("b", git_oid="2" * 40)]
    mp.apply_checksums(files, {"b": "sha256:" + "3" * 64})
    assert files[1].sha256 == "3" * 64
    with pytest.raises(mp.PullError, match="source says sha256:1111.*pins sha256:4444"):
        mp.apply_checksums(files, {"a": "4" * 64})
    with pytest.raises(mp.PullError, match="does not offer"):
        mp.apply_checksums(files, {"c": "4" * 64})
    with pytest.raises(mp.PullError, match="not a sha256"):
        mp.apply_checksums(files, {"a": "xyz"})


# --------------------------------------------------------------- hugging face
def test_hub_pull_check_apply_check_apply(hub, tmp_path):
    dest = tmp_path / "store" / "tiny"
    first_check = hf(hub, dest, check_mode=True)
    assert first_check["changed"] is True and not dest.exists()
    assert {f["status"] for f in first_check["files"]} == {"missing"}

    applied = hf(hub, dest)
    assert applied["changed"] is True
    assert applied["revision"] == hub.repos["acme/tiny"].refs["main"]
    assert applied["bytes"] == applied["bytes_total"] == sum(map(len, [CONFIG, TOKENIZER, WEIGHTS, SHARD2, b"{}\n"]))
    assert applied["throughput_bytes_per_s"] > 0 and applied["duration_s"] > 0
    files = store_files(dest)
    assert files["model-00001-of-00002.safetensors"] == WEIGHTS and files["config.json"] == CONFIG
    assert files["original/params.json"] == b"{}\n"
    assert not (dest / mp.PARTIAL_DIR).exists()
    by_path = {f["path"]: f for f in applied["files"]}
    assert by_path["model-00001-of-00002.safetensors"]["sha256"] == sha(WEIGHTS)
    assert by_path["config.json"]["git_oid"] == model_server.git_blob_oid(CONFIG)

    assert hf(hub, dest, check_mode=True)["changed"] is False
    requests_before = len(hub.log)
    again = hf(hub, dest)
    assert again["changed"] is False and again["bytes"] == 0
    downloads = [entry for entry in hub.log[requests_before:] if "/resolve/" in entry[1] or "/cdn/" in entry[1]]
    assert downloads == []


def test_hub_token_goes_to_the_hub_only(hub, tmp_path):
    hub.token = "hf_secret"
    result = hf(hub, tmp_path / "m", token="hf_secret", allow_patterns=["*.safetensors"])
    assert result["changed"] is True
    cdn = [entry for entry in hub.log if entry[1].startswith("/cdn/")]
    api = [entry for entry in hub.log if entry[1].startswith("/api/")]
    assert cdn and all(auth is None for _m, _p, _r, auth in cdn)
    assert api and all(auth == "Bearer hf_secret" for _m, _p, _r, auth in api)


def test_allow_patterns_and_pagination(hub, tmp_path):
    hub.page_size = 2
    result = hf(hub, tmp_path / "m", allow_patterns=["*.json"])
    assert sorted(f["path"] for f in result["files"]) == ["config.json", "original/params.json", "tokenizer.json"]
    assert sum(1 for entry in hub.log if "/tree/" in entry[1]) >= 3


def test_pinned_commit_stays_put_when_the_branch_moves(hub, tmp_path):
    old = hub.repos["acme/tiny"].refs["main"]
    hub.add_repo("acme/tiny", {"config.json": b'{"new": true}\n'})
    result = hf(hub, tmp_path / "m", revision=old, allow_patterns=["config.json"])
    assert result["revision"] == old and store_files(tmp_path / "m")["config.json"] == CONFIG


@pytest.mark.parametrize("kwargs,fragment", [
    ({"revision": "v9.9"}, "the revision 'v9.9' does not exist in acme/tiny"),
    ({"revision": "0" * 40}, "does not exist in acme/tiny"),
    ({"repo": "acme/nope"}, "repository acme/nope was not found.*set token_file"),
])
def test_hub_not_found_errors(hub, tmp_path, kwargs, fragment):
    with pytest.raises(mp.PullError, match=fragment):
        hf(hub, tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_hub_auth_failure(hub, tmp_path):
    hub.token = "right"
    with pytest.raises(mp.PullError, match=r"authentication failed \(HTTP 401\).*token in token_file was refused"):
        hf(hub, tmp_path / "m", token="wrong")


def test_hub_missing_file_is_a_clear_404(hub, tmp_path):
    hub.faults["tokenizer.json"] = {"missing": True}
    with pytest.raises(mp.PullError, match="downloading tokenizer.json: the file is not in acme/tiny@main"):
        hf(hub, tmp_path / "m")
    # Files that verified wait in the partial directory for the next run; none is in place.
    assert [p for p in store_files(tmp_path / "m") if not p.startswith(mp.PARTIAL_DIR)] == []


@pytest.mark.parametrize("name,data,expected", [
    ("model-00001-of-00002.safetensors", WEIGHTS, "sha256:" + sha(WEIGHTS)),
    ("config.json", CONFIG, "git-blob-sha1:" + model_server.git_blob_oid(CONFIG)),
])
def test_corrupted_file_fails_and_nothing_is_put_in_place(hub, tmp_path, name, data, expected):
    hub.faults[name] = {"corrupt": True}
    dest = tmp_path / "m"
    with pytest.raises(mp.PullError) as err:
        hf(hub, dest)
    message = str(err.value)
    assert f"checksum mismatch for {name}: expected {expected}, got " in message
    assert err.value.details["file"] == name and err.value.details["expected"] == expected
    assert err.value.details["actual"] != expected
    # Nothing reached the store, and the bad download is gone.
    assert [p for p in store_files(dest) if not p.startswith(mp.PARTIAL_DIR)] == []
    assert not os.path.exists(os.path.join(dest, mp.PARTIAL_DIR, name + ".part"))
    del data


# ----------------------------------------------------------------- mirror
@pytest.fixture
def mirror():
    server = model_server.ModelServer().start()
    server.mirror = {"weights.bin": WEIGHTS, "shard2.bin": SHARD2, "config.json": CONFIG}
    server.mirror["SHA256SUMS"] = "".join(f"{sha(data)}  {name}\n" for name, data in server.mirror.items()).encode()
    yield server
    server.stop()


def http_pull(server, dest, manifest="SHA256SUMS", **kwargs):
    opts = options(dest, **kwargs)
    return mp.pull_files(mp.MirrorSource(opts, server.url + "/mirror/", manifest), opts)


def test_mirror_with_sha256sums(mirror, tmp_path):
    result = http_pull(mirror, tmp_path / "m")
    assert result["changed"] and store_files(tmp_path / "m")["weights.bin"] == WEIGHTS
    assert {f["status"] for f in result["files"]} == {"downloaded"}
    assert http_pull(mirror, tmp_path / "m")["changed"] is False


def test_mirror_inline_manifest_sizes_unknown_are_asked_with_head(mirror, tmp_path):
    manifest = [{"path": "weights.bin", "sha256": sha(WEIGHTS)}]
    result = http_pull(mirror, tmp_path / "m", manifest=manifest, check_mode=True)
    assert result["changed"] and result["bytes_needed"] == len(WEIGHTS)
    assert ("HEAD", "/mirror/weights.bin", None, None) in mirror.log


def test_mirror_missing_file(mirror, tmp_path):
    mirror.faults["shard2.bin"] = {"missing": True}
    with pytest.raises(mp.PullError, match=r"(sizing|downloading) shard2.bin: not found \(HTTP 404\) at http://.*/mirror/shard2.bin"):
        http_pull(mirror, tmp_path / "m")


def test_mirror_missing_manifest(mirror, tmp_path):
    with pytest.raises(mp.PullError, match="reading the manifest .*/mirror/NOPE: not found"):
        http_pull(mirror, tmp_path / "m", manifest="NOPE")


def test_mirror_auth(mirror, tmp_path):
    mirror.token = "s3cret"
    with pytest.raises(mp.PullError, match="the server wants a token: set token_file"):
        http_pull(mirror, tmp_path / "m")
    assert http_pull(mirror, tmp_path / "m", token="s3cret")["changed"] is True


def test_truncated_transfer_is_resumed_with_range(mirror, tmp_path):
    mirror.faults["weights.bin"] = {"truncate": "once"}
    result = http_pull(mirror, tmp_path / "m")
    assert {f["path"]: f["status"] for f in result["files"]}["weights.bin"] == "resumed"
    assert store_files(tmp_path / "m")["weights.bin"] == WEIGHTS
    ranges = [r for _m, p, r, _a in mirror.log if p == "/mirror/weights.bin" and r]
    assert ranges == [f"bytes={len(WEIGHTS) // 2}-"]
    # Only the missing half crossed the wire twice: the total is the file plus nothing.
    assert result["bytes"] == len(WEIGHTS) + len(SHARD2) + len(CONFIG)


def test_a_transfer_that_keeps_breaking_keeps_its_partial_for_the_next_run(mirror, tmp_path):
    mirror.faults["weights.bin"] = {"truncate": True}
    dest = tmp_path / "m"
    with pytest.raises(mp.PullError, match=r"weights.bin: the transfer failed 2 times .* next run resumes"):
        http_pull(mirror, dest, retries=1)
    kept = os.path.getsize(os.path.join(dest, mp.PARTIAL_DIR, "weights.bin.part"))
    assert 0 < kept < len(WEIGHTS)
    assert not (dest / "weights.bin").exists() and not (dest / "config.json").exists()
    del mirror.faults["weights.bin"]
    mirror.log.clear()
    result = http_pull(mirror, dest)
    assert store_files(dest)["weights.bin"] == WEIGHTS
    assert [r for m, p, r, _a in mirror.log if p == "/mirror/weights.bin" and m == "GET"] == [f"bytes={kept}-"]
    assert result["bytes"] == len(WEIGHTS) - kept + len(SHARD2) + len(CONFIG)


def test_server_that_ignores_range_restarts_the_file(mirror, tmp_path):
    dest = tmp_path / "m"
    part = dest / mp.PARTIAL_DIR / "weights.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)        # a stale partial that is not even a prefix
    mirror.faults["weights.bin"] = {"no_range": True}
    http_pull(mirror, dest)
    assert store_files(dest)["weights.bin"] == WEIGHTS


def test_stale_partial_detected_by_the_digest(mirror, tmp_path):
    dest = tmp_path / "m"
    part = dest / mp.PARTIAL_DIR / "weights.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"\0" * 1000)        # resumed with Range, so the whole is wrong
    with pytest.raises(mp.PullError, match="checksum mismatch for weights.bin"):
        http_pull(mirror, dest)
    assert not part.exists()
    assert http_pull(mirror, dest)["changed"] is True and store_files(dest)["weights.bin"] == WEIGHTS


def test_slow_server_within_the_timeout(mirror, tmp_path):
    mirror.faults["weights.bin"] = {"slow": 0.05}
    result = http_pull(mirror, tmp_path / "m")
    assert store_files(tmp_path / "m")["weights.bin"] == WEIGHTS
    assert result["duration_s"] >= 0.2          # 5 chunks of 64 KiB, 50 ms each


def test_stalled_server_beyond_the_timeout_fails_and_keeps_the_partial(mirror, tmp_path):
    mirror.faults["weights.bin"] = {"slow": 0.6}
    with pytest.raises(mp.PullError, match=r"weights.bin: the transfer failed 1 times \(.*timed out"):
        http_pull(mirror, tmp_path / "m", timeout=0.3, retries=0)


def test_not_enough_disk_refuses_before_downloading(mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(mp, "disk_free_bytes", lambda path: len(WEIGHTS) + 10)
    with pytest.raises(mp.PullError, match=r"not enough free space for .*: 495.4 KiB still to fetch plus a margin of "
                                           r"1.0 MiB, but only 300.0 KiB free") as err:
        http_pull(mirror, tmp_path / "m", disk_margin_bytes=mp.MIB)
    assert err.value.details["bytes_needed"] == len(WEIGHTS) + len(SHARD2) + len(CONFIG)
    # Sizes were asked (HEAD); not one byte of a file was fetched.
    assert not [p for m, p, _r, _a in mirror.log if p.endswith(".bin") and m == "GET"]
    assert not (tmp_path / "m").exists()


def test_disk_full_while_writing(mirror, tmp_path, monkeypatch):
    real_open = mp.open_partial

    class Full:
        def __init__(self, handle):
            self.handle, self.name, self.count = handle, handle.name, 0

        def write(self, data):
            if self.count + len(data) > 100_000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.count += len(data)
            return self.handle.write(data)

        def __getattr__(self, attr):
            return getattr(self.handle, attr)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(mp, "open_partial", lambda path, mode: Full(real_open(path, mode)))
    dest = tmp_path / "m"
    with pytest.raises(mp.PullError, match=r"disk full while writing (weights|shard2).bin into .* after \d+ of \d+ bytes"):
        http_pull(mirror, dest, manifest=[{"path": "weights.bin", "sha256": sha(WEIGHTS)}])
    assert store_files(dest) == {}


def test_corrupted_store_file_is_fetched_again(mirror, tmp_path):
    dest = tmp_path / "m"
    http_pull(mirror, dest)
    with open(dest / "weights.bin", "r+b") as handle:
        handle.write(b"\xff")            # same size, new mtime
    result = http_pull(mirror, dest)
    assert result["changed"] is True
    assert {f["path"]: f["status"] for f in result["files"]} == {
        "weights.bin": "downloaded", "shard2.bin": "present", "config.json": "present"}
    assert store_files(dest)["weights.bin"] == WEIGHTS


def test_reverify_finds_tampering_that_kept_the_mtime(mirror, tmp_path):
    dest = tmp_path / "m"
    http_pull(mirror, dest)
    stat = os.stat(dest / "weights.bin")
    with open(dest / "weights.bin", "r+b") as handle:
        handle.write(b"\xff")
    os.utime(dest / "weights.bin", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert http_pull(mirror, dest)["changed"] is False          # the record vouches for it
    assert http_pull(mirror, dest, reverify=True)["changed"] is True
    assert store_files(dest)["weights.bin"] == WEIGHTS


def test_checksum_pin_catches_a_mirror_serving_other_bytes(mirror, tmp_path):
    with pytest.raises(mp.PullError, match="source says sha256:.*checksums pins"):
        http_pull(mirror, tmp_path / "m", checksums={"weights.bin": sha(b"other")})


def test_manifest_escaping_dest_is_refused(mirror, tmp_path):
    with pytest.raises(mp.PullError, match="outside dest"):
        http_pull(mirror, tmp_path / "m", manifest=[{"path": "../evil", "sha256": sha(b"")}])


# ------------------------------------------------------------------- path
def test_path_source_copies_and_verifies(tmp_path):
    src = tmp_path / "nfs" / "tiny"
    (src / "sub").mkdir(parents=True)
    (src / "weights.bin").write_bytes(WEIGHTS)
    (src / "sub" / "config.json").write_bytes(CONFIG)
    dest = tmp_path / "store"
    opts = options(dest)
    result = mp.pull_files(mp.PathSource(opts, str(src), None), opts)
    assert result["changed"] and {f["status"] for f in result["files"]} == {"copied"}
    # The record lives in state_dir: dest holds the model's files and nothing else.
    assert store_files(dest) == {"weights.bin": WEIGHTS, os.path.join("sub", "config.json"): CONFIG}
    assert result["state_file"] == mp.state_file_for(opts.state_dir, str(dest))
    assert set(json.loads(open(result["state_file"]).read())["files"]) == {"weights.bin", "sub/config.json"}
    assert mp.pull_files(mp.PathSource(opts, str(src), None), opts)["changed"] is False
    (src / "weights.bin").write_bytes(SHARD2)
    assert mp.pull_files(mp.PathSource(opts, str(src), None), opts)["changed"] is True
    assert (dest / "weights.bin").read_bytes() == SHARD2


def test_path_source_with_a_manifest_that_disagrees(tmp_path):
    src = tmp_path / "nfs"
    src.mkdir()
    (src / "weights.bin").write_bytes(WEIGHTS)
    (src / "SHA256SUMS").write_text(f"{sha(b'else')}  weights.bin\n")
    opts = options(tmp_path / "store")
    with pytest.raises(mp.PullError, match="checksum mismatch for weights.bin: expected sha256:"):
        mp.pull_files(mp.PathSource(opts, str(src), "SHA256SUMS"), opts)
    with pytest.raises(mp.PullError, match="does not exist or is not a directory"):
        mp.pull_files(mp.PathSource(opts, str(tmp_path / "unmounted"), None), opts)


# ---------------------------------------------------------- read-only store
class ReadOnlyFs:
    """Directories that behave as read-only mounts (an NFS export on an inference
    host): statvfs reports ST_RDONLY and every write below them fails with EROFS,
    for root too (chmod 0555 would not stop root). ``flag=False`` keeps statvfs
    quiet, as a server-side refusal (read-only export, root_squash) does."""

    def __init__(self, monkeypatch):
        self.roots: list[str] = []
        self.flag = True
        self.refused: list[str] = []
        real_statvfs, real_open, real_os_open = os.statvfs, open, os.open

        def below(path) -> bool:
            path = os.path.abspath(os.fspath(path))
            return any(path == root or path.startswith(root + os.sep) for root in self.roots)

        def guard(real, *paths_at):
            def wrapper(*args, **kwargs):
                for index in paths_at:
                    if len(args) > index and below(args[index]):
                        self.refused.append(f"{real.__name__} {args[index]}")
                        raise OSError(errno.EROFS, "Read-only file system", os.fspath(args[index]))
                return real(*args, **kwargs)
            return wrapper

        def statvfs(path):
            result = real_statvfs(path)
            if not (self.flag and below(path)):
                return result
            fields = {name: getattr(result, name) for name in dir(result) if name.startswith("f_")}
            fields["f_flag"] |= os.ST_RDONLY
            return SimpleNamespace(**fields)

        def opener(file, mode="r", *args, **kwargs):
            if any(c in mode for c in "wax+") and below(file):
                self.refused.append(f"open {file}")
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(file))
            return real_open(file, mode, *args, **kwargs)

        def os_open(path, flags, *args, **kwargs):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and below(path):
                self.refused.append(f"os.open {path}")
                raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "statvfs", statvfs)
        monkeypatch.setattr(mp, "open", opener, raising=False)
        monkeypatch.setattr(os, "open", os_open)
        for name in ("mkdir", "chmod", "unlink", "remove", "rmdir", "utime"):
            monkeypatch.setattr(os, name, guard(getattr(os, name), 0))
        for name in ("replace", "rename"):
            monkeypatch.setattr(os, name, guard(getattr(os, name), 0, 1))

    def mount(self, path) -> None:
        self.roots.append(os.path.abspath(os.fspath(path)))


@pytest.fixture
def read_only(monkeypatch):
    return ReadOnlyFs(monkeypatch)


def export(tmp_path, files=None):
    """A model store directory filled while writable, and its source."""
    src = tmp_path / "nfs" / "r2"
    src.mkdir(parents=True)
    for name, data in (files or {"weights.bin": WEIGHTS, "config.json": CONFIG}).items():
        (src / name).write_bytes(data)
    return src


def path_pull(src, dest, **kwargs):
    opts = options(dest, **kwargs)
    return mp.pull_files(mp.PathSource(opts, str(src), None), opts)


def test_a_verified_read_only_store_is_ok_and_nothing_is_written_into_it(tmp_path, read_only, monkeypatch):
    """Issue 25: the rolling update stopped on '[Errno 30] Read-only file system' while
    model_pull wrote its record (.model_pull.json.tmp) into a read-only model store."""
    src = export(tmp_path)
    dest = tmp_path / "store" / "r2"
    dest.mkdir(parents=True)
    for name in ("weights.bin", "config.json"):
        (dest / name).write_bytes((src / name).read_bytes())
    read_only.mount(dest)
    state_dir = tmp_path / "var-lib"

    check = path_pull(src, dest, state_dir=str(state_dir), check_mode=True)
    assert check["changed"] is False and not state_dir.exists()
    result = path_pull(src, dest, state_dir=str(state_dir))
    assert result["changed"] is False and result["bytes"] == 0
    assert {f["status"] for f in result["files"]} == {"present"}
    assert read_only.refused == []
    assert sorted(os.listdir(dest)) == ["config.json", "weights.bin"]
    # The record went to state_dir, so the next run does not hash the weights again.
    assert os.path.dirname(result["state_file"]) == str(state_dir)
    hashed = []
    real_hash = mp.hash_file
    monkeypatch.setattr(mp, "hash_file", lambda path, *a, **k: hashed.append(path) or real_hash(path, *a, **k))
    assert path_pull(src, dest, state_dir=str(state_dir))["changed"] is False
    assert hashed == [] and read_only.refused == []


def test_a_record_left_in_dest_by_an_earlier_version_is_still_read(tmp_path, read_only, monkeypatch):
    src = export(tmp_path)
    dest = tmp_path / "store" / "r2"
    first = path_pull(src, dest, state_dir=str(tmp_path / "old-state"))
    # Where earlier versions kept it: inside dest.
    os.replace(first["state_file"], dest / mp.STATE_FILE)
    read_only.mount(dest)
    hashed = []
    real_hash = mp.hash_file
    monkeypatch.setattr(mp, "hash_file", lambda path, *a, **k: hashed.append(path) or real_hash(path, *a, **k))
    result = path_pull(src, dest, state_dir=str(tmp_path / "var-lib"))
    assert result["changed"] is False and hashed == [] and read_only.refused == []


@pytest.mark.parametrize("check_mode", [False, True])
def test_files_missing_from_a_read_only_store_fail_naming_the_cause_and_fix(mirror, tmp_path, read_only, check_mode):
    dest = tmp_path / "store" / "m"
    dest.mkdir(parents=True)
    (dest / "config.json").write_bytes(CONFIG)
    (dest / "weights.bin").write_bytes(b"not the weights")
    read_only.mount(dest)
    with pytest.raises(mp.PullError, match=rf"dest {dest} cannot be written \({dest} is on a read-only filesystem\), "
                                           r"and 2 of 3 files are missing or do not verify there: shard2.bin, "
                                           r"weights.bin\. A read-only model store .* point dest at a writable "
                                           r"directory") as err:
        http_pull(mirror, dest, check_mode=check_mode)
    assert err.value.details == {"read_only": True, "missing": ["shard2.bin", "weights.bin"]}
    assert read_only.refused == []
    assert not [p for m, p, _r, _a in mirror.log if p.endswith(".bin") and m == "GET"]


def test_dest_to_create_below_a_read_only_mount(mirror, tmp_path, read_only):
    (tmp_path / "store").mkdir()
    read_only.mount(tmp_path / "store")
    with pytest.raises(mp.PullError, match=r"cannot be written \(.*/store is on a read-only filesystem\), and 3 of 3"):
        http_pull(mirror, tmp_path / "store" / "m")
    assert read_only.refused == []


def test_a_write_refused_by_the_server_is_named_too(mirror, tmp_path, read_only):
    """The mount flags look writable (root_squash, an export read-only on the server): the write itself fails."""
    dest = tmp_path / "store" / "m"
    dest.mkdir(parents=True)
    read_only.mount(dest)
    read_only.flag = False
    with pytest.raises(mp.PullError, match=r"cannot be written \(writing .*\.model_pull\.partial failed: "
                                           r"Read-only file system\), and 3 of 3 files") as err:
        http_pull(mirror, dest)
    assert err.value.details["read_only"] is True and read_only.refused


def test_write_problem_reads_the_mount_flags_then_the_permissions(tmp_path, read_only, monkeypatch):
    assert mp.write_problem(str(tmp_path)) is None
    read_only.mount(tmp_path)
    assert mp.write_problem(str(tmp_path)) == f"{tmp_path} is on a read-only filesystem"
    read_only.flag = False
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert mp.write_problem(str(tmp_path)) == f"{tmp_path} is not writable by this user (uid {os.geteuid()})"


def test_state_file_is_named_by_the_hash_of_dest(tmp_path):
    one = mp.state_file_for("/var/lib/x", "/srv/models/a")
    assert one == mp.state_file_for("/var/lib/x", "/srv/models/b/../a")
    assert one != mp.state_file_for("/var/lib/x", "/srv/models/b")
    assert os.path.basename(one) == hashlib.sha256(b"/srv/models/a").hexdigest() + ".json"


def test_a_state_dir_that_cannot_be_written_is_a_warning(tmp_path):
    src = export(tmp_path)
    (tmp_path / "a-file").write_text("")
    result = path_pull(src, tmp_path / "store", state_dir=str(tmp_path / "a-file" / "state"))
    assert result["changed"] is True and (tmp_path / "store" / "weights.bin").read_bytes() == WEIGHTS
    assert len(result["warnings"]) == 1
    assert "could not be written to" in result["warnings"][0] and "Make state_dir" in result["warnings"][0]


# ------------------------------------------------------------------ ollama
@pytest.fixture
def ollama(tmp_path):
    args = ollama_double.parse_args(["--port", "0", "--models-dir", str(tmp_path / "ollama"),
                                     "--control-dir", str(tmp_path / "control")])
    (tmp_path / "control").mkdir()
    server = ollama_double.build_server(args)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "control"
    server.shutdown()
    server.server_close()


def test_ollama_check_apply_check_apply(ollama, tmp_path):
    url, _control = ollama
    opts = options(tmp_path, check_mode=True)
    assert mp.pull_ollama(url, "llama3.2:1b", opts)["changed"] is True
    opts.check_mode = False
    pulled = mp.pull_ollama(url, "llama3.2:1b", opts)
    assert pulled["changed"] is True and pulled["model"] == "llama3.2:1b"
    assert pulled["bytes"] == 262144 + 1024 + 96 and pulled["layers"] == 3
    assert pulled["statuses"][0] == "pulling manifest" and pulled["statuses"][-1] == "success"
    assert len(pulled["digest"]) == 64
    opts.check_mode = True
    assert mp.pull_ollama(url, "llama3.2:1b", opts)["changed"] is False
    opts.check_mode = False
    again = mp.pull_ollama(url, "llama3.2:1b", opts)
    assert again["changed"] is False and again["digest"] == pulled["digest"] and again["bytes"] == 0


def test_ollama_bare_name_means_latest(ollama, tmp_path):
    url, _control = ollama
    assert mp.pull_ollama(url, "tinyllama", options(tmp_path))["model"] == "tinyllama:latest"


def test_ollama_unknown_model_and_stream_errors(ollama, tmp_path):
    url, control = ollama
    with pytest.raises(mp.PullError, match="could not pull nope:latest: pull model manifest: file does not exist"):
        mp.pull_ollama(url, "nope", options(tmp_path))
    (control / "pull_error").write_text("max retries exceeded: connection reset")
    with pytest.raises(mp.PullError, match="max retries exceeded"):
        mp.pull_ollama(url, "qwen2.5:0.5b", options(tmp_path))


def test_ollama_digest_pin(ollama, tmp_path):
    url, _control = ollama
    with pytest.raises(mp.PullError, match="expected 0000.*the model was removed"):
        mp.pull_ollama(url, "qwen2.5:0.5b", options(tmp_path), digest="sha256:" + "0" * 64)
    tags = json.loads(ollama_double_tags(url))
    assert tags["models"] == []
    good = mp.pull_ollama(url, "qwen2.5:0.5b", options(tmp_path))["digest"]
    assert mp.pull_ollama(url, "qwen2.5:0.5b", options(tmp_path), digest=good)["changed"] is False


def test_ollama_unreachable(tmp_path):
    with pytest.raises(mp.PullError, match="is Ollama running at http://127.0.0.1:9"):
        mp.pull_ollama("http://127.0.0.1:9", "x", options(tmp_path, timeout=2))


def ollama_double_tags(url: str) -> str:
    from urllib.request import urlopen
    with urlopen(url + "/api/tags", timeout=5) as resp:  # nosec: loopback test double
        return resp.read().decode()

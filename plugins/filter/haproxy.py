# Copyright: enclave.llm contributors
# Apache License 2.0 (see LICENSE)
"""Filters that size HAProxy's open-file limit and read the limits a host allows.

HAProxy computes the file descriptors it needs at start (``maxsock``) and sets its
RLIMIT_NOFILE to that figure; when the hard limit it inherits is lower, it stops with
"Cannot raise FD limit to <maxsock>, limit is <soft>". HAProxy 2.6 (src/haproxy.c,
compute_ideal_maxsock) counts:

* 2 per connection (``maxconn``): the client side and the server side;
* 2 per pipe, and it keeps at least 4 pipes (8) when splicing is off, as here;
* 3 per thread: one poller descriptor and a wake-up pipe; the automatic thread
  count is one per CPU HAProxy may run on, at most 64;
* 1 per listener (each ``bind`` and the ``stats socket``);
* 1 per server with ``check`` (the health-check connection);
* 24 fixed: 10 it reserves itself, 12 for the master-worker mode and the master CLI
  of the packaged unit (``-Ws -S /run/haproxy-master.sock``), 2 more it holds.

Measured with Debian 12's haproxy 2.6.12 under ``-Ws -S``, 3 listeners and 2
checked servers on 2 CPUs: maxconn 4096 asks for 8235 = 8192 + 8 + 6 + 3 + 2 + 24,
the figure of the lab's "Cannot raise FD limit to 8235". The filters below add
``SPARE_FDS`` to the fixed part and assume ``DEFAULT_THREADS`` threads unless told
otherwise, so they never give less than HAProxy asks for.
"""
from __future__ import annotations

from typing import Any

from ansible.errors import AnsibleFilterError

FDS_PER_CONNECTION = 2
PIPE_FDS = 8
FDS_PER_THREAD = 3
FIXED_FDS = 24
SPARE_FDS = 8
# HAProxy's automatic nbthread is one per CPU of its affinity mask, at most 64.
DEFAULT_THREADS = 64
# haproxy.cfg.j2 binds the metrics and inference frontends and the stats socket.
DEFAULT_LISTENERS = 3


def _count(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise AnsibleFilterError(f"{name} must be a whole number, got {value!r}")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError(f"{name} must be a whole number, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise AnsibleFilterError(f"{name} must be a whole number, got {value!r}")
    if number < minimum:
        raise AnsibleFilterError(f"{name} must be at least {minimum}, got {number}")
    return number


def _overhead_fds(listeners: Any, servers: Any, threads: Any) -> int:
    """Descriptors HAProxy needs beyond its connections."""
    return (PIPE_FDS + FDS_PER_THREAD * _count(threads, "threads", 1) + _count(listeners, "listeners")
            + _count(servers, "servers") + FIXED_FDS + SPARE_FDS)


def haproxy_nofile(maxconn: Any, listeners: Any = DEFAULT_LISTENERS, servers: Any = 0,
                   threads: Any = DEFAULT_THREADS) -> int:
    """Open files (RLIMIT_NOFILE) HAProxy needs for ``maxconn`` connections, never less than it asks for.

    ``listeners`` counts bind lines and stats sockets, ``servers`` the servers with
    health checks, ``threads`` an upper bound of HAProxy's threads.
    """
    return FDS_PER_CONNECTION * _count(maxconn, "maxconn", 1) + _overhead_fds(listeners, servers, threads)


def haproxy_maxconn_within(nofile: Any, listeners: Any = DEFAULT_LISTENERS, servers: Any = 0,
                           threads: Any = DEFAULT_THREADS) -> int:
    """The largest maxconn whose ``haproxy_nofile`` fits in ``nofile`` open files (0 when none fits)."""
    room = _count(nofile, "nofile") - _overhead_fds(listeners, servers, threads)
    return max(room // FDS_PER_CONNECTION, 0)


def _limit(value: str, line: str) -> int | None:
    if value == "unlimited":
        return None
    try:
        return int(value)
    except ValueError:
        raise AnsibleFilterError(f"/proc limits line {line!r}: {value!r} is neither a number nor 'unlimited'") from None


def proc_limits(text: Any) -> dict[str, dict]:
    """Parse the text of ``/proc/<pid>/limits``.

    Returns ``{name: {soft, hard, units}}`` keyed by the limit's name as the kernel
    writes it (``Max open files``); ``soft`` and ``hard`` are numbers, or None for
    ``unlimited``; ``units`` is an empty string where the kernel gives none.
    """
    if not isinstance(text, str):
        raise AnsibleFilterError(f"proc_limits expects the text of /proc/<pid>/limits, got {type(text).__name__}")
    lines = text.splitlines()
    if not lines or not lines[0].startswith("Limit"):
        raise AnsibleFilterError("proc_limits: the text does not start with the 'Limit  Soft Limit  Hard Limit' "
                                 "header of /proc/<pid>/limits")
    header = lines[0]
    if "Soft Limit" not in header:
        raise AnsibleFilterError("proc_limits: the header of /proc/<pid>/limits has no 'Soft Limit' column")
    soft_at = header.index("Soft Limit")
    limits: dict[str, dict] = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        name = line[:soft_at].strip()
        values = line[soft_at:].split()
        if not name or len(values) < 2:
            raise AnsibleFilterError(f"proc_limits: cannot read the line {line!r}")
        limits[name] = {"soft": _limit(values[0], line), "hard": _limit(values[1], line),
                        "units": values[2] if len(values) > 2 else ""}
    return limits


class FilterModule:
    """HAProxy open-file sizing and /proc limits."""

    def filters(self) -> dict:
        return {"haproxy_nofile": haproxy_nofile, "haproxy_maxconn_within": haproxy_maxconn_within,
                "proc_limits": proc_limits}

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.enclave.llm.plugins.filter.haproxy import (
    SPARE_FDS, FilterModule, haproxy_maxconn_within, haproxy_nofile, proc_limits)

# What Debian 12's haproxy 2.6.12 asked for ("Cannot raise FD limit to N") when
# started as its unit starts it (-Ws -S <master socket>) under a hard limit of
# 1024, with the role's three listeners: (maxconn, servers with check, nbthread, N).
MEASURED = [
    (4096, 2, 1, 8232),
    (4096, 2, 2, 8235),  # the lab balancer's figure (2 CPUs, 2 servers)
    (4096, 2, 4, 8241),
    (4096, 6, 2, 8239),
    (4096, 50, 2, 8283),
    (4096, 2, 64, 8421),
]

ROWS = [
    ("Max cpu time", "unlimited", "unlimited", "seconds"),
    ("Max stack size", "8388608", "unlimited", "bytes"),
    ("Max processes", "96370", "96370", "processes"),
    ("Max open files", "1024", "4096", "files"),
    ("Max pending signals", "96370", "96370", "signals"),
    ("Max realtime priority", "0", "0", ""),
]
# Laid out as the kernel writes it (fs/proc/base.c: "%-25s %-20s %-20s %-10s").
LIMITS = "".join(f"{name:<25} {soft:<20} {hard:<20} {units:<10}\n" for name, soft, hard, units in
                 [("Limit", "Soft Limit", "Hard Limit", "Units"), *ROWS])


@pytest.mark.parametrize(("maxconn", "servers", "threads", "asked"), MEASURED)
def test_never_less_than_haproxy_asks_for(maxconn, servers, threads, asked):
    assert haproxy_nofile(maxconn, listeners=3, servers=servers, threads=threads) == asked + SPARE_FDS


def test_defaults_assume_64_threads_and_three_listeners():
    assert haproxy_nofile(4096) == 8192 + 8 + 3 * 64 + 3 + 24 + SPARE_FDS == 8427
    assert haproxy_nofile(4096, servers=2) >= 8421
    assert haproxy_nofile("400", "3", "2", "2") == 800 + 8 + 6 + 3 + 2 + 24 + SPARE_FDS


@pytest.mark.parametrize("limit", [1024, 4096, 8235, 65536, 524288])
@pytest.mark.parametrize("servers", [0, 2, 50])
def test_maxconn_within_is_the_largest_that_fits(limit, servers):
    best = haproxy_maxconn_within(limit, servers=servers)
    assert haproxy_nofile(best, servers=servers) <= limit
    assert haproxy_nofile(best + 1, servers=servers) > limit


def test_maxconn_within_the_lab_limit():
    assert haproxy_maxconn_within(4096, listeners=3, servers=2) == 1929
    assert haproxy_maxconn_within(100) == 0


@pytest.mark.parametrize(("args", "message"), [
    ((0,), "maxconn must be at least 1"),
    ((-5,), "maxconn must be at least 1"),
    (("many",), "maxconn must be a whole number"),
    ((None,), "maxconn must be a whole number"),
    ((True,), "maxconn must be a whole number"),
    ((40.5,), "maxconn must be a whole number"),
    ((4096, -1), "listeners must be at least 0"),
    ((4096, 3, "x"), "servers must be a whole number"),
    ((4096, 3, 0, 0), "threads must be at least 1"),
])
def test_bad_input_is_named(args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        haproxy_nofile(*args)


def test_proc_limits_reads_soft_hard_and_units():
    limits = proc_limits(LIMITS)
    assert limits["Max open files"] == {"soft": 1024, "hard": 4096, "units": "files"}
    assert limits["Max cpu time"] == {"soft": None, "hard": None, "units": "seconds"}
    assert limits["Max stack size"] == {"soft": 8388608, "hard": None, "units": "bytes"}
    assert limits["Max realtime priority"] == {"soft": 0, "hard": 0, "units": ""}
    assert len(limits) == 6


def test_proc_limits_of_this_process():
    with open("/proc/self/limits", encoding="ascii") as handle:
        limits = proc_limits(handle.read())
    assert limits["Max open files"]["hard"] >= limits["Max open files"]["soft"] > 0


@pytest.mark.parametrize(("text", "message"), [
    (None, "expects the text of /proc/<pid>/limits"),
    ("", "does not start with"),
    ("Max open files 1024 4096 files\n", "does not start with"),
    ("Limit   Hard\nMax open files 1 2\n", "no 'Soft Limit' column"),
    (LIMITS.replace("1024   ", "lots   "), "'lots' is neither a number nor 'unlimited'"),
    (LIMITS + "Max nothing\n", "cannot read the line"),
])
def test_proc_limits_refuses_other_text(text, message):
    with pytest.raises(AnsibleFilterError, match=message):
        proc_limits(text)


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"haproxy_nofile", "haproxy_maxconn_within", "proc_limits"}

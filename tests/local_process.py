"""Helpers for tests that start local servers: a free port, and starting Ray ahead of other work."""

from __future__ import annotations

import contextlib
import os


def free_port() -> int:
    """A port free on 127.0.0.1 now, outside the ranges Ray and the kernel hand out by themselves
    (:func:`cluster.local_cluster.free_ports`)."""
    from cluster.local_cluster import free_ports

    return free_ports(1)[0]


@contextlib.contextmanager
def ahead_of_other_work():
    """Start Ray a little ahead of whatever else the machine runs (root only; restored after).

    Ray 2.60's raylet aborts its start-up when the node's metrics agent has not written its port
    within ~30 s, which happens on a 2-core machine that is busy with other jobs. The Ray
    processes started meanwhile inherit this priority; nothing else changes."""
    boosted = False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        try:
            os.nice(-5)
            boosted = True
        except OSError:
            pass
    try:
        yield
    finally:
        if boosted:
            os.nice(5)

"""Waiting for a socket by polling it instead of sleeping (server and SDK alike).

On a VM a thread that sleeps gives up its vCPU, which halts; waking it takes longer than a
small model's whole request (bench/README.md, "Third pass"). Both sides therefore poll for a
bounded time where a reply or the next request is about to come.
"""

from __future__ import annotations

import os
import select
import time
from typing import Protocol


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


def socket_poller(sock: int | _HasFileno) -> select.poll:
    """A poll object watching ``sock`` (a socket or its descriptor) for input."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return poller


def poll_until(poller: select.poll, until_ns: int) -> None:
    """Poll until ``poller`` reports input or ``time.perf_counter_ns()`` passes ``until_ns``,
    yielding the CPU on each turn: a poller must not starve the process it waits for when
    both share a core (without it the MLP round trip was bimodal, 175/320 us)."""
    poll = poller.poll
    while not poll(0) and time.perf_counter_ns() < until_ns:
        os.sched_yield()

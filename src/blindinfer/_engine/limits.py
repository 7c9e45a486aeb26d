"""Bounds on what a model may do at run and load time: seconds, working memory, cancellation.

A model's allocations and loop counts can depend on its inputs (ConstantOfShape fed a shape of
[2^30], a Loop whose trip count is an input), so no check before a run can bound it. What
onnxruntime offers, measured here (1.32, CPU):

- ``RunOptions.terminate``: checked before every node, Loop iterations included; a Loop with a
  10^12 trip count stopped 1 ms after the flag was set.
- An arena allocator registered in the onnxruntime environment with ``max_mem``, shared by every
  session that sets ``session.use_env_allocators``: an allocation past the cap fails at once
  (a 1 GiB ConstantOfShape under a 1 GiB cap failed in 0.6 ms, RSS unchanged). Initializers do
  not come from it (a 100 MB weight loaded under a 64 MiB cap), so the cap bounds working memory
  only. The cap is one pool for all concurrent runs: onnxruntime has no per-run arena on CPU.

A single watchdog thread, ticking while runs are in flight, sets ``terminate`` past a run's
deadline; clients that disconnect and server shutdown set it too.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import onnxruntime as ort

T = TypeVar("T")

_arena_lock = threading.Lock()
_arena_bytes: int | None = None


def machine_memory() -> int:
    """Physical memory in bytes (sysconf), or 8 GiB where it cannot be read."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 * 1024**3


def default_run_memory() -> int:
    """A quarter of the machine, at least 512 MiB."""
    return max(512 * 1024**2, machine_memory() // 4)


def install_arena(max_bytes: int) -> None:
    """Register the capped CPU arena in onnxruntime's environment (once per process; a second
    call with another size keeps the first: onnxruntime cannot replace a registered allocator)."""
    global _arena_bytes
    with _arena_lock:
        if _arena_bytes is not None:
            return
        info = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        # arena_extend_strategy 1 = kSameAsRequested: grow by what is asked, never doubling past
        # the cap before it is needed.
        cfg = ort.OrtArenaCfg({"max_mem": int(max_bytes), "arena_extend_strategy": 1})
        ort.create_and_register_allocator(info, cfg)
        _arena_bytes = int(max_bytes)


def arena_bytes() -> int | None:
    return _arena_bytes


def is_arena_exhausted(exc: BaseException) -> bool:
    """onnxruntime's message when the capped arena refuses an allocation (bfc_arena.cc)."""
    text = str(exc)
    return "bfc_arena" in text or "Available memory of" in text or "Failed to allocate" in text


@dataclass
class RunHandle:
    """One run in flight: its onnxruntime RunOptions and why it was stopped, if it was."""

    options: Any = field(default_factory=ort.RunOptions)
    deadline: float = 0.0
    seconds: float = 0.0
    reason: str | None = None  # "time", "cancelled", "shutdown"

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.options.terminate = True


class Watchdog:
    """Stops runs past their deadline. One thread, started on first use; it ticks every
    ``tick`` seconds (no per-run wake-up, nothing on the hot path but a dict insert)."""

    def __init__(self, max_run_seconds: float) -> None:
        self.max_run_seconds = max_run_seconds
        self.tick = min(0.25, max(0.01, max_run_seconds / 4))
        self._runs: dict[int, RunHandle] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start_run(self, seconds: float | None = None) -> tuple[int, RunHandle]:
        seconds = self.max_run_seconds if seconds is None else min(seconds, self.max_run_seconds)
        handle = RunHandle(deadline=time.monotonic() + seconds, seconds=seconds)
        key = next(self._ids)
        with self._lock:
            self._runs[key] = handle
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="run-watchdog", daemon=True)
                self._thread.start()
        return key, handle

    def end_run(self, key: int) -> None:
        with self._lock:
            self._runs.pop(key, None)

    def stop_all(self, reason: str) -> int:
        with self._lock:
            runs = list(self._runs.values())
        for handle in runs:
            handle.stop(reason)
        return len(runs)

    def in_flight(self) -> int:
        return len(self._runs)

    def _loop(self) -> None:
        while True:
            time.sleep(self.tick)
            now = time.monotonic()
            with self._lock:
                late = [h for h in self._runs.values() if h.deadline <= now]
            for handle in late:
                handle.stop("time")


class _LoadTimeout(Exception):
    """A blocking call did not finish in time; it goes on in an abandoned daemon thread."""


_abandoned_lock = threading.Lock()
_abandoned = 0


def abandoned_loads() -> int:
    return _abandoned


def call_with_timeout(fn: Callable[[], T], seconds: float) -> T:
    """Run ``fn`` on a fresh daemon thread and wait at most ``seconds``.

    onnxruntime cannot cancel a session build, so a build past its time is abandoned: the daemon
    thread finishes (or not) on its own, never blocks shutdown, and the caller's worker is free.
    """
    global _abandoned
    result: list[T] = []
    error: list[BaseException] = []
    state = {"done": False, "abandoned": False}

    def target() -> None:
        global _abandoned
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)
        finally:
            with _abandoned_lock:
                state["done"] = True
                if state["abandoned"]:
                    _abandoned -= 1

    thread = threading.Thread(target=target, name="model-load", daemon=True)
    thread.start()
    thread.join(seconds)
    with _abandoned_lock:
        if not state["done"]:
            state["abandoned"] = True
            _abandoned += 1
            raise _LoadTimeout
    if error:
        raise error[0]
    return result[0]

"""Run the real server in this process (a thread with its own event loop), with an injected
TEE backend: used where the backend drives an emulated device that lives in the test process."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from blindinfer._server.config import Settings
from blindinfer._server.runner import build_state, serve_state
from blindinfer._server.state import ServerState
from blindinfer._tee.base import TeeBackend
from tests._server import OWNER_TOKEN, free_port


@dataclass
class InProcessServer:
    url: str
    state: ServerState
    owner_token: str = OWNER_TOKEN


@contextmanager
def inprocess_server(
    data_dir: Path, backend: TeeBackend, **settings: Any
) -> Iterator[InProcessServer]:
    port = free_port()
    released = None
    if backend.insecure:
        settings.setdefault("owner_token", OWNER_TOKEN)
    else:
        # A real TEE takes its owner only from measured configuration or a key broker: here a
        # stand-in broker release of the test token's hash.
        settings.setdefault("owner_resource", "test/owner/sha256")

        def released() -> bytes:
            return hashlib.sha256(OWNER_TOKEN.encode()).digest()

    conf = Settings(data_dir=data_dir, port=port, log_level="warning", **settings)
    state, _ = build_state(conf, backend=backend, released_owner=released)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve_state(state, None, ready.set))
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(30)
    if failure:
        raise RuntimeError("in-process server failed to start") from failure[0]
    try:
        yield InProcessServer(f"https://127.0.0.1:{port}", state)
    finally:
        if state.stop_event is not None:
            loop.call_soon_threadsafe(state.stop_event.set)
        thread.join(15)
        state.executor.shutdown(wait=False)
        if not thread.is_alive():
            loop.close()

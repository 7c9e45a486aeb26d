"""``blindinfer`` (``serve`` and its flags) with timeline marks, for ``bench.timeline`` (never
for serving).

Wraps the protocol's parser callbacks and the endpoint's run in marks taken with
``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux: comparable with the client's marks), kept
in memory and written to ``$BLINDINFER_TIMELINE_OUT`` on SIGUSR1, after which the process exits.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from blindinfer._engine import registry
from blindinfer._server import infer, protocol, runner

MARKS: list[tuple[str, int]] = []
_now = time.perf_counter_ns


def _guarded(base: type[Any], limits: Any, lane: Any = None) -> type[Any]:
    cls = _plain_guarded(base, limits, lane)

    class Marked(cls):  # type: ignore[misc, valid-type]
        def data_received(self, data: bytes) -> None:
            MARKS.append(("server read", _now()))
            super().data_received(data)

        def on_headers_complete(self) -> None:
            MARKS.append(("server head parsed", _now()))
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            MARKS.append(("server body complete", _now()))
            super().on_message_complete()
            MARKS.append(("server lane done (reply written)", _now()))

    return Marked


def _wrap(owner: Any, name: str, before: str, after: str) -> None:
    real = getattr(owner, name)

    def marked(*args: Any, **kwargs: Any) -> Any:
        MARKS.append((before, _now()))
        out = real(*args, **kwargs)
        MARKS.append((after, _now()))
        return out

    setattr(owner, name, marked)


def _dump(*_: object) -> None:
    with open(os.environ["BLINDINFER_TIMELINE_OUT"], "w") as f:
        f.writelines(f"{t} {name}\n" for name, t in MARKS)
    os._exit(0)


_plain_guarded = protocol.guarded
runner.guarded = _guarded  # type: ignore[assignment]
_wrap(registry.ModelRegistry, "run", "server run start", "server run end")
_wrap(infer.InferEndpoint, "_work", "server parse start", "server encode end")
_wrap(protocol, "write_reply", "server reply write start", "server reply write end")

if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _dump)
    from blindinfer._cli import main

    sys.argv = ["blindinfer", *sys.argv[1:]]  # serve and its flags
    main()

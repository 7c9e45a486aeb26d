"""What every built-in pipeline kind implements, and the limits they all obey.

Each kind module (``text_embedding``, ``image_classification``, ``face``, ``ocr``, ``speech``)
exposes ``KIND`` (the manifest's ``kind`` string) and ``build(ctx) -> Pipeline``. Inputs are
client data: every size, count and loop bound comes from :class:`PipelineLimits` and is checked
before work is done; a bad input raises :class:`blindinfer.errors.InvalidInput` (400), an input
past a bound ``PayloadTooLarge`` (413), each with a message naming the problem and nothing about
the server. (``LimitExceeded``, 503, is the server's own run limits: time, memory.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from blindinfer._wire.models import TensorSpec
from blindinfer.errors import InvalidInput, PayloadTooLarge


@dataclass(frozen=True)
class PipelineLimits:
    """Bounds on what one request may make a pipeline do (one place, like EngineOptions)."""

    max_image_pixels: int = 40_000_000  # decoded width x height, checked from the header
    max_image_side: int = 16_384
    max_audio_seconds: float = 600.0  # after decoding, before resampling
    max_audio_channels: int = 8
    max_text_items: int = 256  # batch of a text input
    max_text_bytes: int = 64 * 1024  # one text item, UTF-8
    max_faces: int = 64
    max_text_lines: int = 512  # OCR lines returned
    max_decode_tokens: int = 224  # speech: tokens generated per 30 s window (Whisper's own cap)


class Pipeline(Protocol):
    """A served pipeline: the registry calls it like an onnxruntime session."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def run(
        self, inputs: Mapping[str, np.ndarray], run_options: Any | None = None
    ) -> dict[str, np.ndarray]:
        """Every output by name. ``run_options`` (onnxruntime RunOptions) must be passed to every
        ``session.run`` so that the server's time limit and cancellation stop the whole run."""
        ...


@dataclass(frozen=True)
class BuildContext:
    """What a kind's ``build`` gets: its manifest ``config``, its graphs and data files."""

    config: Mapping[str, Any]
    session: Callable[[str], Any]  # graph name (manifest "graphs" key) -> InferenceSession
    asset: Callable[[str], bytes]  # asset name (manifest "assets" key) -> its bytes
    limits: PipelineLimits


def bytes_items(
    inputs: Mapping[str, np.ndarray], name: str, *, max_items: int, max_bytes: int
) -> list[bytes]:
    """The elements of a BYTES input (numpy object array of bytes), bounded and non-empty."""
    array = inputs[name]
    if array.dtype != object:
        raise InvalidInput(f"input {name!r} must be BYTES")
    if array.size == 0:
        raise InvalidInput(f"input {name!r} is empty: send at least one element")
    if array.size > max_items:
        raise PayloadTooLarge(
            f"input {name!r} has {array.size} elements; at most {max_items} are accepted"
        )
    items: list[bytes] = []
    for i, item in enumerate(array.reshape(-1)):
        if not isinstance(item, bytes):
            raise InvalidInput(f"input {name!r}: element {i} is not bytes")
        if not item:
            raise InvalidInput(f"input {name!r}: element {i} is empty")
        if len(item) > max_bytes:
            raise PayloadTooLarge(
                f"input {name!r}: element {i} is {len(item)} bytes; at most {max_bytes} are "
                "accepted"
            )
        items.append(item)
    return items


def bytes_array(items: Sequence[bytes | str]) -> np.ndarray:
    """A 1-D BYTES tensor (numpy object array of bytes); str items are UTF-8 encoded."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item.encode("utf-8") if isinstance(item, str) else bytes(item)
    return out

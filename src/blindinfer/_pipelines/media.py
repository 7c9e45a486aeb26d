"""Decoding client media inside the TEE: photos (JPEG, PNG) and WAV audio, bounded first.

Sizes are read from the file's header and refused before any pixel or sample is decoded, so a
small file declaring a huge image (a "decompression bomb") costs nothing.
"""

from __future__ import annotations

import io
import math
import struct
import warnings

import numpy as np

from blindinfer._pipelines.base import PipelineLimits
from blindinfer.errors import InvalidInput, PayloadTooLarge

IMAGE_FORMATS = ("JPEG", "PNG")
# Pillow's own bomb check refuses on open with no sizes in its message; ours (decode_image) runs
# right after the header is read, before any pixel is decoded, and names the sizes.
_PIL_CHECKED = False


def _pillow() -> None:
    global _PIL_CHECKED
    if not _PIL_CHECKED:
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        _PIL_CHECKED = True


MIN_AUDIO_RATE = 4_000
MAX_AUDIO_RATE = 384_000
_MAX_RESAMPLE_FACTOR = 1_000  # up/down of the rational resampling ratio (common rates: <= 441)


def decode_image(data: bytes, limits: PipelineLimits, *, what: str = "the image") -> np.ndarray:
    """RGB pixels (height x width x 3, uint8) of a JPEG or PNG, EXIF orientation applied."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    _pillow()
    if not data:
        raise InvalidInput(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except UnidentifiedImageError:
        raise InvalidInput(f"{what} is not a JPEG or PNG file") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"{what} declares more pixels than accepted") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidInput(f"{what} cannot be read: {exc}") from None
    width, height = img.size
    if width < 1 or height < 1:
        raise InvalidInput(f"{what} has no pixels ({width}x{height})")
    if (
        width > limits.max_image_side
        or height > limits.max_image_side
        or width * height > limits.max_image_pixels
    ):
        raise PayloadTooLarge(
            f"{what} is {width}x{height} pixels; at most {limits.max_image_pixels} pixels and "
            f"{limits.max_image_side} on a side are accepted"
        )
    try:
        img.load()
        rgb = (ImageOps.exif_transpose(img) or img).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"{what} is damaged or truncated: {exc}") from None
    return np.asarray(rgb, dtype=np.uint8)


def decode_wav(data: bytes, limits: PipelineLimits) -> tuple[np.ndarray, int]:
    """Mono float32 samples in [-1, 1] and the sample rate of a WAV file (PCM 8/16/24/32-bit
    or IEEE float, any channel count up to the limit)."""
    from scipy.io import wavfile

    if not data:
        raise InvalidInput("the audio is empty")
    if data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        raise InvalidInput("the audio is not a WAV file (no RIFF/WAVE header)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unknown chunks are skipped, not reported
            rate, samples = wavfile.read(io.BytesIO(data), mmap=False)
    except (ValueError, OSError, EOFError, MemoryError, struct.error) as exc:
        # struct.error: scipy's reader on a file cut inside a chunk header
        raise InvalidInput(f"the WAV file cannot be read: {exc}") from None
    if not MIN_AUDIO_RATE <= rate <= MAX_AUDIO_RATE:
        raise InvalidInput(
            f"the WAV sample rate is {rate} Hz; {MIN_AUDIO_RATE}-{MAX_AUDIO_RATE} Hz is accepted"
        )
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    if channels < 1:
        raise InvalidInput("the WAV file has no channels")
    if channels > limits.max_audio_channels:
        raise PayloadTooLarge(
            f"the WAV file has {channels} channels; 1-{limits.max_audio_channels} are accepted"
        )
    seconds = samples.shape[0] / rate
    if seconds > limits.max_audio_seconds:
        raise PayloadTooLarge(
            f"the recording is {seconds:.1f} s long; at most {limits.max_audio_seconds:g} s "
            "are accepted"
        )
    if samples.shape[0] == 0:
        raise InvalidInput("the WAV file holds no samples")
    return _to_float_mono(samples), int(rate)


def _to_float_mono(samples: np.ndarray) -> np.ndarray:
    kind, size = samples.dtype.kind, samples.dtype.itemsize
    if kind == "f":
        x = samples.astype(np.float32)
        if not np.isfinite(x).all():
            raise InvalidInput("the WAV file holds samples that are not finite numbers")
    elif kind == "u" and size == 1:
        x = (samples.astype(np.float32) - 128.0) / 128.0
    elif kind == "i":
        x = samples.astype(np.float32) / float(2 ** (8 * size - 1))
    else:
        raise InvalidInput(f"unsupported WAV sample format ({samples.dtype})")
    if x.ndim == 2:
        x = x.mean(axis=1, dtype=np.float32)
    return np.clip(x, -1.0, 1.0)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``samples`` at ``target`` Hz (polyphase FIR, scipy.signal.resample_poly)."""
    if rate == target:
        return samples.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(rate, target)
    up, down = target // g, rate // g
    if max(up, down) > _MAX_RESAMPLE_FACTOR:
        raise InvalidInput(
            f"the sample rate {rate} Hz is not a common rate this server resamples (8000, 11025, "
            "16000, 22050, 24000, 32000, 44100, 48000, 96000 Hz, ...)"
        )
    out: np.ndarray = resample_poly(samples, up, down).astype(np.float32)
    return out

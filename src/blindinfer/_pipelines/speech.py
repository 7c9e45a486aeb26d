"""Speech to text (kind ``speech-to-text``): Whisper's log-mel front end, 30 s windows, and
beam-search decoding with a key/value cache over the ``encoder``, ``cross_kv`` and ``decoder``
graphs that ``convert/whisper.py`` writes.

Served contract::

    input  "input"  BYTES [1]   a WAV file (PCM 8/16/24/32-bit or IEEE float, any common rate,
                                up to PipelineLimits.max_audio_channels channels)
    output "text"   BYTES [1]   the UTF-8 transcript

Steps: the WAV is decoded and mixed to mono (media.decode_wav), resampled to 16 kHz
(media.resample), cut into consecutive windows of at most 30 s, each cut in the quietest 0.3 s
of the window's last 5 s (the last window padded with silence to 30 s); each
window's log-mel spectrogram is Whisper's (STFT: Hann window of 400 samples, hop 160, power;
80 Slaney mel filters; log10, floored 8 below its maximum, then (x + 4) / 4); the encoder and
the cross-attention K/V run once per window; the decoder starts from <|startoftranscript|>
<|notimestamps|> (tiny.en has no language or task tokens) and a beam search (config
``beam_size`` beams, batched through the cache: one decoder run per token) grows it until
<|endoftext|>. Tokens from config ``suppress`` and every id from
``suppress_from`` on (languages, tasks, timestamps) are never chosen; ``suppress_begin`` (space,
<|endoftext|>) not as the first token. A window is dropped as silence by openai-whisper's rule
(no-speech probability over ``no_speech_threshold`` and mean log-probability under
``logprob_threshold``).

Bounds: the recording is refused past ``max_audio_seconds`` (413) before resampling, so there
are at most ceil(max_audio_seconds / 25) windows; each window decodes at most
``max_decode_tokens`` tokens (and never past the decoder's 448 positions).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from blindinfer._pipelines.base import BuildContext, PipelineLimits, bytes_array, bytes_items
from blindinfer._pipelines.media import decode_wav, resample
from blindinfer._wire.models import TensorSpec
from blindinfer.errors import InvalidInput, InvalidModel

KIND: Final = "speech-to-text"
MAX_AUDIO_BYTES: Final = 256 * 1024 * 1024  # one WAV file (600 s of 48 kHz float stereo: 230 MB)
# Digital silence (RMS under -90 dBFS) is not worth an encoder run: no text, by definition.
_SILENT_RMS: Final = 3e-5
# A window that does not reach the end of the recording is cut in the quietest 0.3 s of its
# last 5 s (a pause between phrases, most of the time), not in a word at exactly 30 s.
_CUT_SEARCH_S: Final = 5.0
_PAUSE_FRAMES: Final = 15  # 0.3 s of 20 ms frames: the pause length looked for


@dataclass(frozen=True)
class SpeechConfig:
    """The manifest's ``config`` (convert/whisper.py writes it), checked at load."""

    sample_rate: int
    n_fft: int
    hop: int
    n_mels: int
    window_frames: int
    audio_ctx: int
    text_ctx: int
    layers: int
    d_model: int
    vocab: int
    eot: int
    sot: int
    no_speech: int
    prompt: tuple[int, ...]
    suppress_from: int
    suppress: tuple[int, ...]
    suppress_begin: tuple[int, ...]
    no_speech_threshold: float
    logprob_threshold: float
    beam_size: int

    @property
    def window_samples(self) -> int:
        return self.window_frames * self.hop

    @classmethod
    def parse(cls, doc: Mapping[str, Any]) -> SpeechConfig:
        def integer(name: str, lo: int, hi: int) -> int:
            value = doc.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise InvalidModel(f"pipeline.json: config.{name} must be an integer {lo}-{hi}")
            return value

        def ids(name: str, vocab: int, most: int) -> tuple[int, ...]:
            value = doc.get(name)
            if (
                not isinstance(value, list)
                or len(value) > most
                or not all(isinstance(t, int) and 0 <= t < vocab for t in value)
            ):
                raise InvalidModel(f"pipeline.json: config.{name} must list token ids < {vocab}")
            return tuple(value)

        def number(name: str, lo: float, hi: float) -> float:
            value = doc.get(name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise InvalidModel(f"pipeline.json: config.{name} must be a number")
            if not lo <= float(value) <= hi:
                raise InvalidModel(f"pipeline.json: config.{name} must be in [{lo}, {hi}]")
            return float(value)

        vocab = integer("vocab", 2, 1_000_000)
        conf = cls(
            sample_rate=integer("sample_rate", 8_000, 48_000),
            n_fft=integer("n_fft", 16, 4096),
            hop=integer("hop", 1, 4096),
            n_mels=integer("n_mels", 1, 512),
            window_frames=integer("window_frames", 1, 100_000),
            audio_ctx=integer("audio_ctx", 1, 100_000),
            text_ctx=integer("text_ctx", 2, 100_000),
            layers=integer("layers", 1, 128),
            d_model=integer("d_model", 1, 16_384),
            vocab=vocab,
            eot=integer("eot", 0, vocab - 1),
            sot=integer("sot", 0, vocab - 1),
            no_speech=integer("no_speech", 0, vocab - 1),
            prompt=ids("prompt", vocab, 16),
            suppress_from=integer("suppress_from", 0, vocab),
            suppress=ids("suppress", vocab, vocab),
            suppress_begin=ids("suppress_begin", vocab, vocab),
            no_speech_threshold=number("no_speech_threshold", 0.0, 1.0),
            logprob_threshold=number("logprob_threshold", -100.0, 0.0),
            beam_size=integer("beam_size", 1, 16),
        )
        if not conf.prompt or conf.prompt[0] != conf.sot or len(conf.prompt) >= conf.text_ctx:
            raise InvalidModel("pipeline.json: config.prompt must start with config.sot")
        if conf.window_samples > 10 * 60 * conf.sample_rate or conf.n_fft > conf.window_samples:
            raise InvalidModel("pipeline.json: config.window_frames x hop out of range")
        return conf


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default, what Whisper's STFT uses)."""
    return np.asarray(0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n), np.float64)


def log_mel(samples: np.ndarray, filters: np.ndarray, conf: SpeechConfig) -> np.ndarray:
    """Whisper's log-mel spectrogram [n_mels, window_frames] of one window of 16 kHz samples
    (padded with zeros, or cut, to the window): centred STFT with reflect padding, power, the
    last frame dropped, mel, log10 floored at 1e-10 and at 8 below the maximum, (x + 4) / 4."""
    x = np.zeros(conf.window_samples, np.float64)
    n = min(len(samples), conf.window_samples)
    x[:n] = samples[:n]
    half = conf.n_fft // 2
    padded = np.pad(x, half, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, conf.n_fft)[:: conf.hop]
    frames = frames[: conf.window_frames] * _hann(conf.n_fft)
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2  # [frames, n_fft / 2 + 1]
    mel = filters.astype(np.float64) @ power.T
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - 8.0)
    return np.asarray((logs + 4.0) / 4.0, np.float32)


def windows(n: int, conf: SpeechConfig, audio: np.ndarray | None = None) -> list[tuple[int, int]]:
    """(start, end) sample ranges covering ``n`` samples, each at most one window long.

    A window that does not reach the end is cut in the middle of the quietest 0.3 s (15 frames
    of 20 ms; the latest on ties) of its last ``_CUT_SEARCH_S`` seconds, so that a word crossing
    the 30 s mark goes whole into the next window instead of being split. Each window
    but the last advances by at least window - search seconds: bounded by n / that."""
    size = conf.window_samples
    search = min(size // 2, int(_CUT_SEARCH_S * conf.sample_rate))
    frame = max(1, conf.sample_rate // 50)
    out: list[tuple[int, int]] = []
    start = 0
    while start < n:
        end = min(n, start + size)
        if end < n and audio is not None:
            tail = audio[end - search : end].astype(np.float64)
            frames = tail[: len(tail) // frame * frame].reshape(-1, frame)
            # mean energy of each run of _PAUSE_FRAMES frames: a pause between phrases, not
            # the short gap between two words of one phrase
            energy = np.convolve(np.square(frames).mean(axis=1), np.ones(_PAUSE_FRAMES), "valid")
            quietest = len(energy) - 1 - int(np.argmin(energy[::-1]))
            end = end - search + (quietest + _PAUSE_FRAMES // 2) * frame + frame // 2
        out.append((start, end))
        start = end
    return out


def _log_softmax(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64) - float(x.max())
    return np.asarray(z - math.log(float(np.exp(z).sum())), np.float64)


@dataclass(frozen=True)
class WindowResult:
    tokens: tuple[int, ...]  # generated text tokens, <|endoftext|> excluded
    no_speech_prob: float
    avg_logprob: float


class SpeechPipeline:
    inputs = (TensorSpec(name="input", datatype="BYTES", shape=(1,)),)
    outputs = (TensorSpec(name="text", datatype="BYTES", shape=(1,)),)

    def __init__(self, ctx: BuildContext) -> None:
        self.conf = SpeechConfig.parse(ctx.config)
        self._limits: PipelineLimits = ctx.limits
        self._encoder = ctx.session("encoder")
        self._cross_kv = ctx.session("cross_kv")
        self._decoder = ctx.session("decoder")
        self.filters = _filters(ctx.asset("mel_filters"), self.conf)
        self._tokens = _token_bytes(ctx.asset("tokens"), self.conf.vocab)
        conf = self.conf
        self._mask = np.zeros(conf.vocab, bool)
        self._mask[conf.suppress_from :] = True
        self._mask[list(conf.suppress)] = True
        self._mask[conf.eot] = False  # the end is always allowed
        self._mask_begin = self._mask.copy()
        self._mask_begin[list(conf.suppress_begin)] = True

    def run(
        self, inputs: Mapping[str, np.ndarray], run_options: Any | None = None
    ) -> dict[str, np.ndarray]:
        if "input" not in inputs:
            raise InvalidInput("input 'input' is missing")
        (data,) = bytes_items(inputs, "input", max_items=1, max_bytes=MAX_AUDIO_BYTES)
        return {"text": bytes_array([self.transcribe(data, run_options)])}

    def samples(self, data: bytes) -> np.ndarray:
        """The recording as mono float32 samples at the model's rate (16 kHz)."""
        try:
            mono, rate = decode_wav(data, self._limits)
        except struct.error:  # scipy's chunk-header reads on a file cut inside a header
            raise InvalidInput("the WAV file is truncated inside a chunk header") from None
        check_complete(data)
        return resample(mono, rate, self.conf.sample_rate)

    def transcribe(self, data: bytes, run_options: Any | None = None) -> str:
        audio = self.samples(data)
        out = bytearray()
        for start, end in self.windows(audio):
            window = audio[start:end]
            if float(np.sqrt(np.mean(np.square(window, dtype=np.float64)))) < _SILENT_RMS:
                continue
            result = self.decode_window(window, run_options)
            if self._is_silence(result):
                continue
            for token in result.tokens:
                out += self._tokens[token]
        return out.decode("utf-8", errors="replace").strip()

    def windows(self, audio: np.ndarray) -> list[tuple[int, int]]:
        return windows(len(audio), self.conf, audio)

    def _is_silence(self, result: WindowResult) -> bool:
        return (
            result.no_speech_prob > self.conf.no_speech_threshold
            and result.avg_logprob < self.conf.logprob_threshold
        )

    def cross(self, window: np.ndarray, run_options: Any | None = None) -> dict[str, np.ndarray]:
        """The decoder's ``cross_k`` and ``cross_v`` feeds for one window (batch 1: the graph
        broadcasts them over the beams)."""
        mel = log_mel(window, self.filters, self.conf)
        (features,) = self._encoder.run(["features"], {"mel": mel[None]}, run_options)
        keys, values = self._cross_kv.run(
            ["cross_k", "cross_v"], {"features": features}, run_options
        )
        return {"cross_k": keys, "cross_v": values}

    def _logprobs(self, logits: np.ndarray, first: bool) -> np.ndarray:
        """Log-probabilities [rows, vocab] of the next token, suppressed tokens at -inf."""
        x = logits.astype(np.float64)
        x[:, self._mask_begin if first else self._mask] = -np.inf
        x -= x.max(axis=1, keepdims=True)
        out: np.ndarray = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
        return out

    def decode_window(
        self, window: np.ndarray, run_options: Any | None = None, beam_size: int | None = None
    ) -> WindowResult:
        """Beam search (``beam_size`` beams, config ``beam_size`` by default; 1 is greedy) over
        one window of samples, at most max_decode_tokens tokens and one decoder run each.

        Like openai-whisper's BeamSearchDecoder: each live beam proposes its beam_size + 1 best
        tokens, the best beam_size continuations stay live, a beam that ends is kept aside until
        beam_size have ended; the winner has the best log-probability per token."""
        conf = self.conf
        width = beam_size or conf.beam_size
        cross = self.cross(window, run_options)
        past = np.zeros((conf.layers, 2, 1, 0, conf.d_model), np.float32)
        logits, past = self._decoder.run(
            ["logits", "present"],
            {"tokens": np.array([conf.prompt], np.int64), "past": past, **cross},
            run_options,
        )
        # the no-speech probability is read at <|startoftranscript|> (position 0)
        no_speech = float(np.exp(_log_softmax(logits[0, 0])[conf.no_speech]))
        logp = self._logprobs(logits[:, -1], first=True)
        beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
        ended: list[tuple[tuple[int, ...], float]] = []
        budget = min(self._limits.max_decode_tokens, conf.text_ctx - len(conf.prompt))
        for step in range(budget):
            live: list[tuple[tuple[int, ...], float, int]] = []
            for score, row, token in self._candidates(beams, logp, width + 1):
                if token == conf.eot:
                    if len(ended) < width:
                        ended.append((beams[row][0], score))
                else:
                    live.append((beams[row][0] + (token,), score, row))
                if len(live) == width:
                    break
            if len(ended) >= width or not live:
                break
            beams = [(seq, score) for seq, score, _ in live]
            if step == budget - 1:
                break
            rows = np.array([row for _, _, row in live], np.int64)
            feed = np.array([[seq[-1]] for seq, _, _ in live], np.int64)
            logits, past = self._decoder.run(
                ["logits", "present"],
                {"tokens": feed, "past": past[:, :, rows], **cross},
                run_options,
            )
            logp = self._logprobs(logits[:, -1], first=False)
        # beams still live at the budget fill the places of those that did not end (best first)
        pool = ended + beams[: max(0, width - len(ended))]
        best, score = max(pool, key=lambda e: e[1] / max(1, len(e[0])))
        return WindowResult(best, no_speech, score / (len(best) + 1))

    @staticmethod
    def _candidates(
        beams: list[tuple[tuple[int, ...], float]], logp: np.ndarray, k: int
    ) -> list[tuple[float, int, int]]:
        """(score, beam row, token) of each beam's k best next tokens, best first (ties broken
        by row then token, so decoding is deterministic)."""
        out: list[tuple[float, int, int]] = []
        for row, (_, base) in enumerate(beams):
            top = np.argpartition(-logp[row], k)[:k]  # the k best, unordered (sorted below)
            out.extend((base + float(logp[row, t]), row, int(t)) for t in top)
        out.sort(key=lambda c: (-c[0], c[1], c[2]))
        return out


def check_complete(data: bytes) -> None:
    """InvalidInput when the WAV's ``data`` chunk declares more bytes than the file holds.

    scipy.io.wavfile reads a cut-off data chunk as a shorter recording without a word; a file
    truncated in transfer must not be transcribed as if it were whole. RIFF chunks (Microsoft
    RIFF / WAVE, "Multimedia Programming Interface and Data Specifications 1.0"): a 4-byte id,
    a u32 little-endian size, the body padded to an even length. RF64's 0xFFFFFFFF size (the
    real one is in ds64) is not checked here."""
    pos = 12
    while pos + 8 <= len(data):  # each pass moves pos forward by at least 8 bytes
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        if chunk_id == b"data":
            present = len(data) - pos - 8
            if size != 0xFFFFFFFF and size > present:
                raise InvalidInput(
                    f"the WAV file is truncated: its data chunk declares {size} bytes, "
                    f"{present} are present"
                )
            return
        pos += 8 + size + (size & 1)


def _filters(raw: bytes, conf: SpeechConfig) -> np.ndarray:
    try:
        filters = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InvalidModel(f"the mel_filters asset is not a .npy array: {exc}") from None
    want = (conf.n_mels, conf.n_fft // 2 + 1)
    if filters.shape != want or filters.dtype != np.float32 or not np.isfinite(filters).all():
        raise InvalidModel(f"the mel_filters asset must be float32 {want}")
    return np.asarray(filters)


def _token_bytes(raw: bytes, vocab: int) -> tuple[bytes, ...]:
    """The tokens asset: line i is the hex of token i's bytes (empty: never printed)."""
    try:
        lines = raw.decode("ascii").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        table = tuple(bytes.fromhex(line) for line in lines)
    except ValueError:
        raise InvalidModel("the tokens asset must be one hex string per line") from None
    if len(table) != vocab:
        raise InvalidModel(f"the tokens asset has {len(table)} tokens; config.vocab is {vocab}")
    return table


def build(ctx: BuildContext) -> SpeechPipeline:
    return SpeechPipeline(ctx)

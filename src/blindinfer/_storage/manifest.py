"""The store manifest: which sealed models are live, sealed and versioned against rollback.

The disk is outside the trust boundary, and a sealed file is authentic forever: without more,
an operator could restore an old ``<id>.sealed`` (a deleted model comes back) or the file a
``replace`` superseded (the name resolves to the old version). The manifest closes that:

    store-manifest.sealed = 12-byte nonce | AES-256-GCM(store key, nonce, JSON, aad=PURPOSE)
    JSON = {"format": 1, "version": N, "models": {model_id: {"sha256": hex of the sealed
            file's bytes, "name": ..., "generation": version that wrote the entry}}}

Only files listed with a matching digest are served; any other sealed file is ignored (and
reported, never deleted). Every add, replace and delete writes version N+1 under an exclusive
``flock`` on ``store-manifest.lock`` (replicas sharing one directory serialise their writes),
written to a temporary file, fsynced, renamed and the directory fsynced, before the change is
reported as done.

What the manifest alone cannot stop is restoring an older *manifest* (with its files): the
whole directory rolled back to an earlier consistent state. A :class:`VersionAnchor` kept
outside the operator's reach (a key broker resource that only this TEE identity may write, a
vTPM NV monotonic counter) closes that: the manifest version may never be below it.
:class:`FileAnchor` is for tests only; a file on the host's disk can be rolled back too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blindinfer.errors import StoreError

MANIFEST_FILE = "store-manifest.sealed"
LOCK_FILE = "store-manifest.lock"
PURPOSE = b"blindinfer-store-manifest-v1"
FORMAT = 1
_NONCE = 12


class VersionAnchor(Protocol):
    """A monotonic counter the operator cannot roll back (key broker resource, vTPM NV index)."""

    def read(self) -> int | None:
        """The highest manifest version ever written, or None before the first."""
        ...

    def advance(self, version: int) -> None:
        """Record that ``version`` was written (never lowers the value)."""
        ...


class FileAnchor:
    """A VersionAnchor in a plain file. FOR TESTS ONLY: the operator can restore it too."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except FileNotFoundError:
            return None
        except ValueError:
            raise StoreError(f"{self.path}: not a version anchor") from None

    def advance(self, version: int) -> None:
        current = self.read()
        if current is not None and current >= version:
            return
        _atomic_write(self.path, str(version).encode())


@dataclass(frozen=True)
class Entry:
    sha256: str  # hex digest of the sealed file's bytes
    name: str
    generation: int  # the manifest version that wrote this entry


@dataclass(frozen=True)
class Manifest:
    version: int
    models: Mapping[str, Entry] = field(default_factory=dict)


class RolledBack(StoreError):
    """The store is older than its anchor (or than a version this process already saw)."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """tmp + fsync + rename + fsync of the directory: the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class StoreManifest:
    """The sealed manifest of one store: it lives in the store directory, beside the ``models/``
    directory it describes (shared by every replica that mounts it)."""

    def __init__(self, directory: Path, key: bytes, anchor: VersionAnchor | None = None) -> None:
        if len(key) != 32:
            raise ValueError("the store key must be 32 bytes")
        self.directory = directory
        self.path = directory / MANIFEST_FILE
        self.anchor = anchor
        self.highest_seen = 0  # an in-process anchor: this process never goes back either
        self._aead = AESGCM(key)
        directory.mkdir(parents=True, exist_ok=True)

    # --- reading -------------------------------------------------------------------------------

    def stamp(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime_ns) of the manifest file: a cheap "did it change" for polling."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def read(self) -> Manifest | None:
        """The current manifest (None when there is none yet), checked against the anchor."""
        manifest = self._read_unchecked()
        self._check_anchor(manifest)
        return manifest

    def _read_unchecked(self) -> Manifest | None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            doc = json.loads(self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], PURPOSE))
            if doc.get("format") != FORMAT:
                raise StoreError(f"{self.path}: unknown manifest format {doc.get('format')!r}")
            models = {
                str(mid): Entry(str(e["sha256"]), str(e["name"]), int(e["generation"]))
                for mid, e in doc["models"].items()
            }
            return Manifest(int(doc["version"]), models)
        except (InvalidTag, ValueError):
            raise StoreError(
                f"{self.path} cannot be unsealed (sealed by another TEE identity, or tampered with)"
            ) from None
        except (KeyError, TypeError, AttributeError):
            raise StoreError(f"{self.path}: malformed manifest") from None

    def _check_anchor(self, manifest: Manifest | None) -> None:
        have = 0 if manifest is None else manifest.version
        if have < self.highest_seen:
            raise RolledBack(
                f"the store was rolled back: its manifest is at version {have} but this server "
                f"already saw version {self.highest_seen}; not applying it"
            )
        anchored = None if self.anchor is None else self.anchor.read()
        if anchored is None:
            self.highest_seen = max(self.highest_seen, have)
            return
        if have < anchored:
            what = "is missing" if manifest is None else f"is at version {have}"
            raise RolledBack(
                f"the store was rolled back: its manifest {what} but the version anchor says "
                f"{anchored} was written; restore the current store (refusing to serve an older "
                "one)"
            )
        self.highest_seen = max(self.highest_seen, have)

    # --- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive across processes (flock on the lock file), for read-modify-write."""
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, manifest: Manifest) -> None:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "version": manifest.version,
            "models": {
                mid: {"sha256": e.sha256, "name": e.name, "generation": e.generation}
                for mid, e in sorted(manifest.models.items())
            },
        }
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, json.dumps(doc).encode(), PURPOSE)
        _atomic_write(self.path, sealed)
        self.highest_seen = max(self.highest_seen, manifest.version)
        if self.anchor is not None:
            # After the manifest: a crash in between leaves the anchor behind (caught up at the
            # next write), never ahead of what is on disk.
            self.anchor.advance(manifest.version)

    def update(self, change: Callable[[dict[str, Entry], int], None]) -> Manifest:
        """Read, let ``change`` edit the entries (it gets the new version number; it may raise
        to abort), write version N+1. Returns the new manifest once it is durable."""
        with self.locked():
            current = self.read() or Manifest(0)
            models = dict(current.models)
            version = current.version + 1
            change(models, version)
            new = Manifest(version, models)
            self._write(new)
            return new

    def create(self, models: Mapping[str, Entry]) -> Manifest | None:
        """The first manifest (first run or migration); None if another process wrote one
        meanwhile (read it then)."""
        with self.locked():
            if self._read_unchecked() is not None:
                return None
            self._check_anchor(None)
            new = Manifest(1, dict(models))
            self._write(new)
            return new


def is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)

"""On-disk cache for collateral, refreshed before it expires.

Collateral (DCAP TCB info, QE identity and CRLs; AMD VCEK and ASK/ARK certificates) is signed by
the vendor, so the cache needs no integrity protection of its own: a verifier rejects tampered or
expired items. It exists so that a server does not call the PCCS or AMD KDS on every handshake,
and keeps serving while those services are briefly down.

Each entry is one JSON file ``<directory>/<key>.json`` holding the items (base64) and the moment
the earliest of them expires. An entry is refreshed once ``now >= expires - margin``; if the
refresh fails, the cached items are still returned while ``now < expires``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from blindinfer.errors import CollateralError

log = logging.getLogger(__name__)

DEFAULT_MARGIN = timedelta(hours=6)
_KEY_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CacheEntry:
    items: dict[str, bytes]
    expires: datetime


class CollateralCache:
    """A directory of collateral entries keyed by a short, file-name-safe string."""

    def __init__(
        self, directory: Path, *, margin: timedelta = DEFAULT_MARGIN, clock: Clock = utc_now
    ) -> None:
        self.directory = directory
        self.margin = margin
        self._clock = clock
        self._lock = threading.Lock()

    def get(
        self,
        key: str,
        fetch: Callable[[], Mapping[str, bytes]],
        expiry: Callable[[Mapping[str, bytes]], datetime],
    ) -> dict[str, bytes]:
        """The cached items for ``key``, fetched (and stored) when missing or close to expiry.

        ``fetch`` raises CollateralError on failure; ``expiry`` returns the earliest moment any
        fetched item stops being valid. Raises CollateralError when nothing valid is available.
        """
        with self._lock:
            now = self._clock()
            cached = self.load(key)
            if cached is not None and now < cached.expires - self.margin:
                return dict(cached.items)
            try:
                items = dict(fetch())
                expires = expiry(items)
            except CollateralError as exc:
                if cached is not None and now < cached.expires:
                    log.warning("collateral refresh for %s failed, serving cache: %s", key, exc)
                    return dict(cached.items)
                raise
            if expires <= now:
                raise CollateralError(
                    f"freshly fetched collateral for {key} expired at {expires.isoformat()}"
                    f" (now {now.isoformat()}); check the collateral service and the clock"
                )
            self.store(key, CacheEntry(items, expires))
            return items

    def _path(self, key: str) -> Path:
        if not _KEY_RE.match(key):
            raise CollateralError(f"invalid collateral cache key {key!r}")
        return self.directory / f"{key}.json"

    def load(self, key: str) -> CacheEntry | None:
        """The stored entry, or None when absent or unreadable (a corrupt file is refetched)."""
        path = self._path(key)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            expires = datetime.fromisoformat(doc["expires"])
            items = {str(k): base64.b64decode(v, validate=True) for k, v in doc["items"].items()}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            log.warning("ignoring unreadable collateral cache file %s: %s", path, exc)
            return None
        if expires.tzinfo is None:
            return None
        return CacheEntry(items, expires)

    def store(self, key: str, entry: CacheEntry) -> None:
        """Write atomically (temporary file + rename) so a crash never leaves half a file."""
        path = self._path(key)
        doc = {
            "expires": entry.expires.isoformat(),
            "items": {k: base64.b64encode(v).decode() for k, v in entry.items.items()},
        }
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=f".{key}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(doc, f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

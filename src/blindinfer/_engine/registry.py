"""The model registry: validated onnxruntime sessions, addressable by id, name or sha256.

Shared by every API surface (native OIP v2, BlindAI 0.6 compatibility): a model uploaded
through one can be run through the other. Mutations take a lock; lookups read an immutable
snapshot so inference never waits on an upload.

With a store manifest (``_storage/manifest.py``, always in the server), the manifest decides
what is live: start-up serves only the models it lists with matching digests, every add,
replace and delete commits a new manifest version before it returns, and :meth:`sync` (polled
by :meth:`start_sync`) brings this process in line with changes other replicas sharing the
directory committed.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import re
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import onnxruntime as ort

from blindinfer._engine import limits
from blindinfer._engine.skeleton import External
from blindinfer._engine.validate import Signature, parse_model, signature_of
from blindinfer._pipelines import bundle
from blindinfer._pipelines.base import Pipeline, PipelineLimits
from blindinfer._storage.manifest import Entry, Manifest, StoreManifest, is_disk_full
from blindinfer._storage.sealed import SealedStore, SealWriter
from blindinfer._wire.models import ModelInfo, TensorSpec
from blindinfer._wire.tensors import datatype_of
from blindinfer.errors import (
    Conflict,
    InsufficientStorage,
    InvalidInput,
    InvalidModel,
    LimitExceeded,
    ModelNotFound,
    PayloadTooLarge,
    ServerError,
    StoreError,
    first_line,
)

log = logging.getLogger("blindinfer.engine")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEX64_RE = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class LoadedModel:
    info: ModelInfo
    session: Any  # onnxruntime.InferenceSession (untyped package)
    inputs: Mapping[str, TensorSpec] = field(default_factory=dict)
    output_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineOptions:
    max_models: int = 32
    max_model_size: int = 512 * 1024 * 1024
    intra_op_threads: int = 1
    optimization: str = "all"  # onnxruntime graph optimisation level: none, basic, extended, all
    max_run_seconds: float = 60.0
    max_run_memory: int | None = None  # onnxruntime working-memory cap; None = uncapped
    max_load_seconds: float = 120.0


class PipelineSession:
    """A pipeline behind onnxruntime's ``run(names, feeds, run_options)``: the registry runs a
    pipeline exactly like a model (same checks, time limit, cancellation)."""

    def __init__(self, pipeline: Pipeline, kind: str) -> None:
        self.pipeline = pipeline
        self.kind = kind

    def run(self, names: Sequence[str], feeds: Mapping[str, np.ndarray], options: Any) -> list[Any]:
        out = self.pipeline.run(feeds, options)
        return [out[n] for n in names]


def release_model_bytes(session: Any) -> None:
    """Drop the serialized model onnxruntime's Python wrapper keeps for the session's whole life.

    ``InferenceSession`` holds the bytes it was built from (``_model_bytes``, a TODO in its own
    source) and the SessionOptions it was given (``_sess_options_initial``, which hold views of
    the upload as external initializers) only to rebuild the session in
    ``set_providers``, which the server never calls: every served model would cost its size
    twice, forever (435 MB model: 994 MB retained; 469 MB without).
    ``tests/engine/test_memory.py`` fails if onnxruntime renames the attributes."""
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None
    if getattr(session, "_sess_options_initial", None) is not None:
        session._sess_options_initial = None


def session_options(opts: EngineOptions) -> Any:
    so = ort.SessionOptions()
    so.intra_op_num_threads = opts.intra_op_threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3  # errors only: onnxruntime must never log tensor contents
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opts.optimization]
    if opts.max_run_memory is not None:
        limits.install_arena(opts.max_run_memory)
        so.add_session_config_entry("session.use_env_allocators", "1")
    return so


def _ortvalue(external: External, data: bytes) -> Any:
    """An OrtValue over a view of the upload (onnxruntime copies it while building)."""
    array = external.array(data)
    if external.onnx_type is None:
        return ort.OrtValue.ortvalue_from_numpy(array)
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(array, external.onnx_type)


# Abandoned loads still burning CPU: past this many, uploads wait for them to finish.
MAX_ABANDONED_LOADS = 2


def _storage_error(exc: OSError) -> Exception:
    if is_disk_full(exc):
        return InsufficientStorage(
            "the server's disk is full: the model was not stored (models already stored are "
            "intact); ask the operator to free space"
        )
    return exc


_END = object()


class Upload:
    """A model being received (``ModelRegistry.begin_upload``): every piece fed is hashed and,
    when persisted, encrypted and written to the sealed temporary file, on a worker thread when
    ``threaded`` (hashlib, AES-GCM and file writes drop the GIL, so this overlaps the network
    reads). After the last piece the file is fsynced on that thread too, while the model is
    validated and loaded."""

    def __init__(
        self,
        model_id: str,
        meta: dict[str, Any],
        replace: bool,
        persist: bool,
        writer: SealWriter | None,
        threaded: bool,
    ) -> None:
        self.model_id = model_id
        self.meta = meta
        self.replace = replace
        self.persist = persist
        self._writer = writer
        self._digest = hashlib.sha256() if writer is None else None
        self._error: BaseException | None = None
        self._file_sha256: str | None = None
        self._hashed = threading.Event()
        self._finished = threading.Event()
        self._aborted = False
        self._ended = False
        self._queue: queue.SimpleQueue[Any] | None = None
        self._thread: threading.Thread | None = None
        if threaded:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._work, name="upload-seal", daemon=True)
            self._thread.start()

    def _take(self, piece: Any) -> None:
        if self._writer is not None:
            self._writer.update(piece)
        else:
            assert self._digest is not None
            self._digest.update(piece)

    def _end_work(self) -> None:
        self._hashed.set()
        if self._writer is not None:
            self._file_sha256 = self._writer.finish()

    def _work(self) -> None:
        assert self._queue is not None
        try:
            while True:
                piece = self._queue.get()
                if piece is None or self._aborted:
                    return
                if piece is _END:
                    self._end_work()
                    return
                if self._error is None:
                    self._take(piece)
        except BaseException as exc:  # reported to the request by feed/end/commit
            self._error = exc
        finally:
            self._hashed.set()
            self._finished.set()

    def _raise_error(self) -> None:
        exc = self._error
        if exc is not None:
            if isinstance(exc, OSError):
                raise _storage_error(exc) from None
            raise exc

    def feed(self, piece: bytes | bytearray | memoryview) -> None:
        """Take the next piece of the model (not copied: it must not change afterwards)."""
        self._raise_error()
        if self._queue is not None:
            self._queue.put(piece)
            return
        try:
            self._take(piece)
        except OSError as exc:
            raise _storage_error(exc) from None

    def end(self) -> None:
        """No more pieces: the file's tag and fsync follow (on the worker when threaded)."""
        if self._ended:
            return
        self._ended = True
        if self._queue is not None:
            self._queue.put(_END)
            return
        try:
            self._end_work()
        except OSError as exc:
            raise _storage_error(exc) from None
        finally:
            self._finished.set()

    def sha256(self) -> str:
        """The model's sha256 (hex): waits for the worker to hash every piece."""
        self._hashed.wait()
        self._raise_error()
        if self._writer is not None:
            return self._writer.model_sha256()
        assert self._digest is not None
        return self._digest.hexdigest()

    def commit(self) -> str:
        """Rename the sealed file into place; returns the sha256 of its bytes (the manifest's)."""
        assert self._writer is not None
        self._finished.wait()
        self._raise_error()
        assert self._file_sha256 is not None
        try:
            self._writer.commit()
        except OSError as exc:
            raise _storage_error(exc) from None
        return self._file_sha256

    def abort(self) -> None:
        """Stop and remove the temporary file, if not committed. Blocking (joins the worker)."""
        self._aborted = True
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        if self._writer is not None:
            self._writer.abort()


def check_name(name: str) -> str:
    if not _NAME_RE.match(name) or _HEX64_RE.match(name) or _UUID_RE.match(name.lower()):
        raise InvalidInput(
            f"invalid model name {name!r}: use 1-128 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit, and not shaped like a model id or a sha256"
        )
    return name


class ModelRegistry:
    def __init__(
        self,
        store: SealedStore | None,
        options: EngineOptions | None = None,
        *,
        manifest: StoreManifest | None = None,
    ) -> None:
        """``manifest=None`` with a store: every sealed file is live (no rollback protection;
        unit tests only, the server always passes one)."""
        self.store = store
        self.manifest = manifest if store is not None else None
        self.options = options or EngineOptions()
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}  # by model_id; replaced wholesale on change
        self._ephemeral: set[str] = set()  # in memory only (persist=False: the demo model)
        self._version = 0  # manifest version the in-memory view reflects
        self._failed: dict[str, str] = {}  # model_id -> sha256 that could not be loaded
        self.ignored: list[str] = []  # sealed files on disk the manifest does not list
        self._sync_lock = threading.Lock()
        self._sync_stamp: tuple[int, int, int] | None = None
        self._sync_stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self.watchdog = limits.Watchdog(self.options.max_run_seconds)
        self.pipeline_limits = PipelineLimits()

    # --- loading -------------------------------------------------------------------------------

    def _session(self, data: bytes, label: str = "the model") -> Any:
        """A validated onnxruntime session for one ONNX graph, within the load time limit."""
        parts = parse_model(data)
        if limits.abandoned_loads() >= MAX_ABANDONED_LOADS:
            raise LimitExceeded(
                "the server is still busy with earlier model loads that passed their time limit; "
                "try again later"
            )
        opts = session_options(self.options)
        # What was checked, re-encoded from one reading of the upload (skeleton.py), and never
        # the uploaded bytes themselves.
        model = parts.loadable
        if parts.externals:
            # Big initializers are copied from the upload itself: onnxruntime parses a small
            # protobuf and copies each weight once. The views are dropped with ``opts``
            # (release_model_bytes drops the session's own reference).
            opts.add_external_initializers(
                [e.name for e in parts.externals],
                [_ortvalue(e, data) for e in parts.externals],
            )
        del parts
        try:
            session = limits.call_with_timeout(
                lambda: ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"]),
                self.options.max_load_seconds,
            )
        except limits._LoadTimeout:
            raise InvalidModel(
                f"onnxruntime did not finish loading {label} within "
                f"{self.options.max_load_seconds:g} s (setting max_load_seconds); the load was "
                "abandoned"
            ) from None
        except Exception as exc:  # onnxruntime raises its own untyped exception classes
            raise InvalidModel(f"onnxruntime cannot load {label}: {first_line(exc)}") from exc
        release_model_bytes(session)
        return session

    def _runnable(self, data: bytes) -> tuple[Any, Signature, str | None]:
        """(session-like object, its signature, pipeline kind or None) for an upload: an ONNX
        model, or a pipeline bundle whose every graph is validated like a model."""
        if not bundle.is_bundle(data):
            session = self._session(data)
            return session, signature_of(session), None
        unpacked = bundle.unpack(data, self.options.max_model_size)
        try:
            pipeline = bundle.build(unpacked, self._session, self.pipeline_limits)
        except (InvalidModel, LimitExceeded):
            raise
        except Exception as exc:  # a bundle whose data files its kind cannot use
            raise InvalidModel(
                f"the {unpacked.kind} pipeline bundle cannot be built: {first_line(exc)}"
            ) from None
        sig = Signature(tuple(pipeline.inputs), tuple(pipeline.outputs))
        return PipelineSession(pipeline, unpacked.kind), sig, unpacked.kind

    def _build(
        self,
        data: bytes,
        model_id: str,
        name: str,
        created: str,
        restricted: bool,
        sha256: Callable[[], str] | None = None,
    ) -> LoadedModel:
        session, sig, kind = self._runnable(data)
        info = ModelInfo(
            model_id=model_id,
            name=name,
            sha256=sha256() if sha256 else hashlib.sha256(data).hexdigest(),
            size=len(data),
            created=created,
            inputs=sig.inputs,
            outputs=sig.outputs,
            restricted=restricted,
            pipeline=kind,
        )
        return LoadedModel(
            info=info,
            session=session,
            inputs={t.name: t for t in sig.inputs},
            output_names=tuple(t.name for t in sig.outputs),
        )

    def load_stored(
        self, progress: Callable[[int, int, str], None] | None = None, *, migrate: bool = False
    ) -> list[str]:
        """Reload the stored models at start-up. Returns the ids that failed (kept on disk).

        With a manifest: only the models it lists are loaded; a missing manifest while sealed
        models exist raises StoreError unless ``migrate`` (adopt the files found, once)."""
        if self.store is None:
            return []
        if self.manifest is None:
            return self._load_all_files(progress)
        manifest = self.manifest.read()
        if manifest is None:
            manifest = self._first_manifest(migrate)
        failed = self._apply(manifest, progress)
        listed = manifest.models
        self.ignored = [i for i in self.store.ids() if i not in listed]
        if self.ignored:
            log.warning(
                "%d sealed file(s) not listed in the store manifest were ignored (left on disk, "
                "not served): %s",
                len(self.ignored),
                ", ".join(self.ignored),
            )
        return failed

    def _first_manifest(self, migrate: bool) -> Manifest:
        assert self.store is not None and self.manifest is not None
        found = list(self.store.ids())
        if found and not migrate:
            raise StoreError(
                f"{self.store.directory} holds {len(found)} sealed model(s) but no store "
                "manifest, so which of them are current cannot be known (a deleted or replaced "
                "model may have been restored); start once with --migrate-store to adopt all of "
                "them, only if this directory is known not to have been rolled back"
            )
        entries: dict[str, Entry] = {}
        for model_id in found:
            try:
                name = str(self.store.get(model_id).meta["name"])
                entries[model_id] = Entry(self.store.file_sha256(model_id), name, 1)
            except (StoreError, KeyError, OSError, ValueError) as exc:
                log.error("sealed file %s not adopted into the manifest: %s", model_id, exc)
        if found:
            log.warning("store manifest created: adopted %d existing sealed model(s)", len(entries))
        created = self.manifest.create(entries)
        if created is not None:
            return created
        again = self.manifest.read()  # a replica created it first
        assert again is not None
        return again

    def _load_all_files(self, progress: Callable[[int, int, str], None] | None) -> list[str]:
        assert self.store is not None
        ids = list(self.store.ids())
        failed: list[str] = []
        for i, model_id in enumerate(ids):
            if progress:
                progress(i, len(ids), model_id)
            loaded = self._load_one(model_id, None)
            if loaded is None:
                failed.append(model_id)
                continue
            with self._lock:
                self._models = {**self._models, model_id: loaded}
        if progress:
            progress(len(ids), len(ids), "")
        return failed

    def _load_one(self, model_id: str, sha256: str | None) -> LoadedModel | None:
        assert self.store is not None
        try:
            stored = self.store.get(model_id, sha256)
            meta = stored.meta
            return self._build(
                stored.data,
                model_id,
                str(meta["name"]),
                str(meta["created"]),
                bool(meta.get("restricted", False)),
            )
        except (StoreError, InvalidModel, LimitExceeded, KeyError, OSError, ValueError) as exc:
            # Never delete what we cannot read: the operator may have started us with the
            # wrong key or a newer version may understand it.
            log.error("stored model %s could not be loaded (kept on disk): %s", model_id, exc)
            return None

    def _apply(
        self, manifest: Manifest, progress: Callable[[int, int, str], None] | None = None
    ) -> list[str]:
        """Make the in-memory models what ``manifest`` lists (plus the in-memory-only ones).
        Loads happen outside the lock; a manifest older than what is applied is skipped."""
        wanted = manifest.models
        current = self._models
        todo = [
            mid
            for mid, e in wanted.items()
            if mid not in current and self._failed.get(mid) != e.sha256
        ]
        loaded: dict[str, LoadedModel] = {}
        failed: list[str] = []
        for i, model_id in enumerate(todo):
            if progress:
                progress(i, len(todo), model_id)
            got = self._load_one(model_id, wanted[model_id].sha256)
            if got is None:
                self._failed[model_id] = wanted[model_id].sha256
                failed.append(model_id)
            else:
                loaded[model_id] = got
        if progress:
            progress(len(todo), len(todo), "")
        with self._lock:
            if manifest.version < self._version:
                return failed  # a newer version was applied meanwhile (a local commit)
            names = {m.info.name for m in loaded.values()}
            models = {
                mid: m
                for mid, m in self._models.items()
                if (mid in wanted and mid not in self._ephemeral)
                or (mid in self._ephemeral and m.info.name not in names)
            }
            self._ephemeral &= models.keys()
            models.update(loaded)
            self._models = models
            self._version = manifest.version
        return failed

    def sync(self) -> bool:
        """Pick up what other replicas committed to the shared store; True if anything changed.

        Cheap when nothing did (one stat). A manifest older than one already seen, or below the
        version anchor, is refused (logged) and the current models stay served."""
        if self.manifest is None:
            return False
        with self._sync_lock:
            stamp = self.manifest.stamp()
            if stamp is not None and stamp == self._sync_stamp:
                return False
            try:
                manifest = self.manifest.read()
            except StoreError as exc:
                log.error("store manifest not applied: %s", exc)
                return False
            self._sync_stamp = stamp
            if manifest is None or manifest.version <= self._version:
                return False
            before = set(self._models)
            self._apply(manifest)
            return set(self._models) != before

    def start_sync(self, interval: float) -> None:
        """Poll the manifest every ``interval`` seconds in a daemon thread (replicas)."""
        if self.manifest is None or interval <= 0 or self._sync_thread is not None:
            return

        def loop() -> None:
            while not self._sync_stop.wait(interval):
                try:
                    self.sync()
                except Exception as exc:  # the poller must outlive one bad round
                    log.error("store sync failed: %s", type(exc).__name__)

        self._sync_thread = threading.Thread(target=loop, name="store-sync", daemon=True)
        self._sync_thread.start()

    def stop_sync(self) -> None:
        self._sync_stop.set()

    # --- mutations -----------------------------------------------------------------------------

    def add(
        self,
        data: bytes,
        *,
        name: str | None = None,
        replace: bool = False,
        restricted: bool = False,
        persist: bool = True,
    ) -> ModelInfo:
        """Validate, seal and load a model. With ``replace``, a model of that name is swapped
        atomically (the old one stays served until the new one is stored). ``persist=False``
        keeps it in memory only (the built-in demo model)."""
        self._check_size(len(data))
        upload = self.begin_upload(
            name=name, replace=replace, restricted=restricted, persist=persist, threaded=False
        )
        try:
            upload.feed(data)
        except BaseException:
            upload.abort()
            raise
        return self.finish_upload(upload, data)

    def _check_size(self, size: int) -> None:
        if size > self.options.max_model_size:
            raise PayloadTooLarge(
                f"the model is {size} bytes, over the server limit of "
                f"{self.options.max_model_size} bytes (setting max_model_size)"
            )

    def begin_upload(
        self,
        *,
        name: str | None = None,
        replace: bool = False,
        restricted: bool = False,
        persist: bool = True,
        threaded: bool = True,
    ) -> Upload:
        """Start a model upload whose bytes are hashed and sealed to a temporary file as they
        arrive (``Upload.feed``, on a worker thread when ``threaded``); ``finish_upload``
        validates and commits it, ``Upload.abort`` removes the file. Nothing is served or
        listed before ``finish_upload`` succeeds."""
        if name is not None:
            check_name(name)
        model_id = str(uuid.uuid4())
        created = datetime.now(UTC).isoformat(timespec="seconds")
        meta = {"name": name or model_id, "created": created, "restricted": restricted}
        writer = None
        if self.store is not None and persist:
            try:
                writer = self.store.writer(model_id, meta)
            except OSError as exc:
                raise _storage_error(exc) from None
        return Upload(model_id, meta, replace, persist, writer, threaded)

    def finish_upload(self, upload: Upload, data: bytes) -> ModelInfo:
        """Validate ``data`` (the bytes fed to ``upload``), then store and serve it. Blocking.
        The sealed file is fsynced while the model is validated; it is renamed into place only
        once the model loads, and removed on any failure."""
        try:
            self._check_size(len(data))
            upload.end()
            meta = upload.meta
            loaded = self._build(
                data,
                upload.model_id,
                str(meta["name"]),
                str(meta["created"]),
                bool(meta["restricted"]),
                upload.sha256,
            )
            del data
            with self._lock:
                return self._commit_upload(loaded, upload)
        finally:
            upload.abort()  # a no-op once committed

    def _commit_upload(self, loaded: LoadedModel, upload: Upload) -> ModelInfo:
        """(lock held) The name and model-count checks, then store and swap in."""
        model_id = loaded.info.model_id
        replace, persist = upload.replace, upload.persist
        old = self._by_name(loaded.info.name)
        if self.manifest is not None and persist:
            return self._add_committed(loaded, upload.commit, replace, old)
        if old is not None and not replace:
            raise Conflict(
                f"a model named {loaded.info.name!r} already exists (id {old.info.model_id}); "
                "delete it first or upload with replace"
            )
        if old is None and len(self._models) >= self.options.max_models:
            raise Conflict(
                f"the server already holds {len(self._models)} models, its limit "
                "(setting max_models); delete one first"
            )
        if self.store is not None and persist:
            upload.commit()
        models = dict(self._models)
        if old is not None:
            del models[old.info.model_id]
            self._ephemeral.discard(old.info.model_id)
        models[model_id] = loaded
        if not persist:
            self._ephemeral.add(model_id)
        self._models = models
        if old is not None and self.store is not None:
            self.store.delete(old.info.model_id)
        return loaded.info

    def _add_committed(
        self,
        loaded: LoadedModel,
        store: Callable[[], str],
        replace: bool,
        old: LoadedModel | None,
    ) -> ModelInfo:
        """add() with a manifest (lock held): the manifest, read under its cross-process lock,
        decides name conflicts and the model limit, so two replicas cannot both win a name."""
        assert self.store is not None and self.manifest is not None
        info = loaded.info
        local_only = old if old is not None and old.info.model_id in self._ephemeral else None
        if local_only is not None and not replace:
            raise Conflict(
                f"a model named {info.name!r} already exists (id {local_only.info.model_id}); "
                "delete it first or upload with replace"
            )
        in_memory = len(self._ephemeral) - (local_only is not None)
        digest = store()
        removed: list[str] = []

        def change(entries: dict[str, Entry], version: int) -> None:
            same = [mid for mid, e in entries.items() if e.name == info.name]
            if same and not replace:
                raise Conflict(
                    f"a model named {info.name!r} already exists (id {same[0]}); delete it "
                    "first or upload with replace"
                )
            if not same and len(entries) + in_memory >= self.options.max_models:
                raise Conflict(
                    f"the server already holds {len(entries) + in_memory} models, its limit "
                    "(setting max_models); delete one first"
                )
            for mid in same:
                del entries[mid]
                removed.append(mid)
            entries[info.model_id] = Entry(digest, info.name, version)

        try:
            manifest = self._commit(change)
        except BaseException:
            self.store.delete(info.model_id)  # never listed: not a stored model
            raise
        models = {m: v for m, v in self._models.items() if m not in removed}
        if local_only is not None:
            models.pop(local_only.info.model_id, None)
            self._ephemeral.discard(local_only.info.model_id)
        models[info.model_id] = loaded
        self._models = models
        self._version = max(self._version, manifest.version)
        for mid in removed:
            self.store.delete(mid)  # superseded: the manifest no longer lists it
        return info

    def _commit(self, change: Callable[[dict[str, Entry], int], None]) -> Manifest:
        assert self.manifest is not None
        try:
            return self.manifest.update(change)
        except OSError as exc:
            if is_disk_full(exc):
                raise InsufficientStorage(
                    "the server's disk is full: the change was not stored (models already "
                    "stored are intact); ask the operator to free space"
                ) from None
            raise

    def delete(self, ref: str) -> ModelInfo:
        with self._lock:
            model = self.resolve(ref)
            model_id = model.info.model_id
            persisted = model_id not in self._ephemeral
            if self.manifest is not None and persisted:
                # Gone from the manifest first: a crash before the unlink leaves a file that
                # is ignored at the next start, never a model that comes back.

                def change(entries: dict[str, Entry], version: int) -> None:
                    entries.pop(model_id, None)  # already gone (another replica): still fine

                manifest = self._commit(change)
                self._version = max(self._version, manifest.version)
            models = dict(self._models)
            del models[model_id]
            self._ephemeral.discard(model_id)
            if self.store is not None and persisted:
                self.store.delete(model_id)
            self._models = models
        return model.info

    # --- lookups -------------------------------------------------------------------------------

    def _by_name(self, name: str) -> LoadedModel | None:
        for m in self._models.values():
            if m.info.name == name:
                return m
        return None

    def resolve(self, ref: str) -> LoadedModel:
        """Find a model by id, then name, then sha256 (hex, any case)."""
        models = self._models
        found = models.get(ref) or self._by_name(ref)
        if found is None and _HEX64_RE.match(ref):
            digest = ref.lower()
            found = next((m for m in models.values() if m.info.sha256 == digest), None)
        if found is None:
            raise ModelNotFound(
                f"no model {ref!r} on this server (looked up by id, name and sha256); "
                "list models with `blindinfer models URL`"
            )
        return found

    def list(self) -> list[ModelInfo]:
        return sorted((m.info for m in self._models.values()), key=lambda i: i.created)

    def __len__(self) -> int:
        return len(self._models)

    # --- inference -----------------------------------------------------------------------------

    def check_inputs(self, model: LoadedModel, inputs: Mapping[str, np.ndarray]) -> None:
        """Refuse anything that does not match the model's signature, naming the problem."""
        expected = model.inputs
        missing = [n for n in expected if n not in inputs]
        unknown = [n for n in inputs if n not in expected]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if unknown:
                parts.append(f"unknown input(s) {unknown}")
            raise InvalidInput(
                f"model {model.info.name!r}: {'; '.join(parts)}; it takes {list(expected)}"
            )
        for name, array in inputs.items():
            spec = expected[name]
            try:
                got = datatype_of(array)
            except ValueError as exc:
                raise InvalidInput(f"input {name!r}: {exc}") from None
            if got != spec.datatype:
                raise InvalidInput(f"input {name!r} must be {spec.datatype}, got {got}")
            if len(array.shape) != len(spec.shape) or any(
                want >= 0 and want != have
                for want, have in zip(spec.shape, array.shape, strict=True)
            ):
                raise InvalidInput(
                    f"input {name!r} must have shape {list(spec.shape)} (-1 = any), "
                    f"got {list(array.shape)}"
                )

    def run(
        self,
        model: LoadedModel,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        on_start: Callable[[limits.RunHandle], None] | None = None,
        max_seconds: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Validate and run; blocking (call it from a worker thread: onnxruntime drops the GIL).

        The run is stopped past ``max_run_seconds`` or the working-memory cap; ``on_start`` gets
        its handle so that the caller can stop it too (a client that disconnects)."""
        self.check_inputs(model, inputs)
        names = list(outputs) if outputs else list(model.output_names)
        unknown = [n for n in names if n not in model.output_names]
        if unknown:
            raise InvalidInput(
                f"model {model.info.name!r} has no output(s) {unknown}; it has "
                f"{list(model.output_names)}"
            )
        key, handle = self.watchdog.start_run(max_seconds)
        try:
            if on_start is not None:
                on_start(handle)
            results = model.session.run(names, dict(inputs), handle.options)
        except Exception as exc:  # onnxruntime's exception classes are not importable types
            raise self._run_error(model, handle, exc) from None
        finally:
            self.watchdog.end_run(key)
        return dict(zip(names, results, strict=True))

    def _run_error(self, model: LoadedModel, handle: limits.RunHandle, exc: Exception) -> Exception:
        if handle.reason is None and isinstance(exc, ServerError):
            return exc  # a pipeline stage's own refusal (InvalidInput, LimitExceeded): as is
        if handle.reason is None and isinstance(model.session, PipelineSession):
            if isinstance(exc, MemoryError):
                return LimitExceeded(f"the run of model {model.info.name!r} ran out of memory")
            if not limits.is_arena_exhausted(exc):
                return InvalidInput(
                    f"the {model.session.kind} pipeline {model.info.name!r} could not process "
                    f"this input ({type(exc).__name__})"
                )
        if handle.reason == "time":
            seconds = handle.seconds
            return LimitExceeded(
                f"the run of model {model.info.name!r} was stopped after {seconds:g} s "
                "(setting max_run_seconds)"
            )
        if handle.reason == "shutdown":
            return LimitExceeded("the server is shutting down; the run was stopped")
        if handle.reason == "cancelled":
            return InvalidInput("the run was cancelled: the client went away")
        if limits.is_arena_exhausted(exc):
            return LimitExceeded(
                f"the run of model {model.info.name!r} needed more working memory than the "
                f"server allows ({limits.arena_bytes()} bytes for all runs, setting "
                "max_run_memory); it was stopped"
            )
        if isinstance(exc, MemoryError):
            return LimitExceeded(f"the run of model {model.info.name!r} ran out of memory")
        return InvalidInput(f"model {model.info.name!r} rejected the inputs: {first_line(exc)}")

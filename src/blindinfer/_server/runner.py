"""Start-up and the serving loop: backend, TLS identity, store, registry, listeners."""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import uvicorn

from blindinfer._engine.demo import DEMO_NAME, demo_model_bytes
from blindinfer._engine.registry import EngineOptions, ModelRegistry
from blindinfer._keys import release_key
from blindinfer._pipelines.bundle import pack_dir
from blindinfer._server._internals import http_protocol_class, load_config
from blindinfer._server.app import build_app
from blindinfer._server.coalesce import coalescing
from blindinfer._server.config import Settings
from blindinfer._server.infer import InferEndpoint
from blindinfer._server.metrics import metrics_app
from blindinfer._server.owner import owner_digest
from blindinfer._server.protocol import ConnectionLimits, guarded
from blindinfer._server.state import Listener, ServerState
from blindinfer._server.tls import generate_identity
from blindinfer._storage.manifest import FileAnchor, StoreManifest, VersionAnchor
from blindinfer._storage.sealed import SealedStore
from blindinfer._tee import TeeBackend, create_backend
from blindinfer.errors import ConfigError, StoreError

log = logging.getLogger("blindinfer.server")


def enter_empty_directory(data_dir: Path) -> None:
    """Make the working directory an empty one that only this process may write.

    onnxruntime resolves a model's relative external-data paths against the working directory
    when the model comes as bytes. Validation refuses every such reference; this is the second
    wall: even one that slipped through would find nothing to read."""
    empty = data_dir / "empty"
    empty.mkdir(mode=0o500, exist_ok=True)
    for leftover in empty.iterdir():
        raise ConfigError(f"{empty} must stay empty (found {leftover.name}); remove what is in it")
    os.chmod(empty, 0o500)
    os.chdir(empty)


def _anchor(settings: Settings, backend: TeeBackend) -> VersionAnchor | None:
    if settings.store_anchor is not None:
        if settings.store_anchor_file is not None:
            raise ConfigError("give either store_anchor or store_anchor_file, not both")
        from blindinfer._storage.tpm_anchor import parse_anchor_spec

        try:
            return parse_anchor_spec(settings.store_anchor)
        except StoreError as exc:
            raise ConfigError(str(exc)) from None
    if settings.store_anchor_file is None:
        return None
    if not backend.insecure:
        log.warning(
            "store_anchor_file is a file on the host's disk: it does not stop an operator "
            "rolling the store back (use a key broker or vTPM anchor)"
        )
    return FileAnchor(settings.store_anchor_file)


def _broker_context(settings: Settings) -> ssl.SSLContext | None:
    if settings.key_broker_ca_file is None:
        return None
    return ssl.create_default_context(cafile=str(settings.key_broker_ca_file))


def _sealing_key(settings: Settings, backend: TeeBackend) -> bytes:
    """The store key: released by the key broker after attestation when one is configured,
    else the backend's own (SGX: MRENCLAVE-bound; SNP: derived or file; TDX/Nitro: a file)."""
    if settings.key_broker:
        log.info("sealing key: from the key broker after attestation (%s)", settings.key_resource)
        return release_key(
            settings.key_broker,
            settings.key_resource,
            backend,
            context=_broker_context(settings),
        )
    if backend.kind in ("tdx", "nitro"):
        log.warning(
            "the sealing key comes from a file the operator supplies: development only; use "
            "--key-broker (a Trustee KBS or 'cdh') in production"
        )
    return backend.sealing_key()


def build_state(
    settings: Settings,
    backend: TeeBackend | None = None,
    *,
    released_owner: Callable[[], bytes] | None = None,
    anchor: VersionAnchor | None = None,
) -> tuple[ServerState, str | None]:
    """Everything but the sockets. Returns the state and a freshly generated owner token.

    ``backend`` replaces the one ``settings.tee`` names (tests drive emulated devices);
    ``released_owner`` releases ``settings.owner_resource`` from the key broker; ``anchor`` is
    the store's version anchor (else ``settings.store_anchor_file``, tests only)."""
    data_dir = settings.data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if backend is None:
        backend = create_backend(settings.tee, data_dir, **settings.tee_options)
    sealing_key = _sealing_key(settings, backend)
    if released_owner is None and settings.key_broker and settings.owner_resource:
        broker, resource = settings.key_broker, settings.owner_resource
        context = _broker_context(settings)

        def released_owner() -> bytes:
            return release_key(broker, resource, backend, context=context)

    # The owner first: a real TEE without a measured owner refuses before touching the store.
    digest, new_token = owner_digest(settings, backend, sealing_key, released=released_owner)
    tls = generate_identity(
        settings.hostnames, ratls=backend.get_evidence if settings.ratls_evidence else None
    )
    store_dir = (settings.store_dir or data_dir).resolve()
    store = SealedStore(store_dir / "models", sealing_key)
    manifest = StoreManifest(store_dir, sealing_key, anchor or _anchor(settings, backend))
    registry = ModelRegistry(
        store,
        EngineOptions(
            max_models=settings.max_models,
            max_model_size=settings.max_model_size,
            intra_op_threads=settings.intra_op_threads,
            max_run_seconds=settings.max_run_seconds,
            max_run_memory=settings.max_run_memory,
            max_load_seconds=settings.max_load_seconds,
        ),
        manifest=manifest,
    )

    def progress(done: int, total: int, model_id: str) -> None:
        if total:
            log.info("loading stored models: %d/%d", done, total)

    try:
        failed = registry.load_stored(progress, migrate=settings.migrate_store or backend.insecure)
    except StoreError as exc:
        raise ConfigError(f"the model store cannot be opened: {exc}") from None
    if failed:
        log.warning("%d stored model(s) could not be loaded and were left on disk", len(failed))
    if settings.demo_model and not any(i.name == DEMO_NAME for i in registry.list()):
        registry.add(demo_model_bytes(), name=DEMO_NAME, persist=False)
    if settings.examples:
        load_examples(registry, settings.examples_dir)
    registry.start_sync(settings.store_poll_seconds)
    executor = ThreadPoolExecutor(settings.inference_workers, thread_name_prefix="infer")
    state = ServerState(settings, backend, registry, tls, digest, executor)
    state.evidence()  # fail at start-up, not on the first client, if the TEE cannot attest
    return state, new_token


def load_examples(registry: ModelRegistry, folder: Path) -> None:
    """Serve every bundle ``make examples`` built (in memory, like the demo model), named as
    in its manifest; ConfigError telling how to build them when they are not there."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ConfigError(
            f"no example bundles in {folder} (no manifest.json): run `make examples` first, or "
            "point --examples-dir at its output"
        )
    names = sorted(json.loads(manifest.read_text()))
    present = {i.name for i in registry.list()}
    for i, name in enumerate(names):
        if name in present:
            continue
        log.info("loading example pipelines: %d/%d %s", i + 1, len(names), name)
        try:
            data = pack_dir(folder / name)
        except OSError as exc:
            raise ConfigError(f"example bundle {name} cannot be read: {exc}") from None
        registry.add(data, name=name, persist=False)
    log.info("loading example pipelines: %d/%d done", len(names), len(names))


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        timeout=settings.idle_timeout,
        max_head=settings.max_header_size,
        max_connections=settings.max_connections,
        direct_body_max=settings.max_request_size,
        spin_ns=settings.spin_us * 1000,
    )


def listeners(state: ServerState) -> list[Listener]:
    s = state.settings
    infer = InferEndpoint(state)  # the app's inference endpoint, and the protocol's lane
    native = guarded(coalescing(http_protocol_class()), connection_limits(s), lane=infer)
    out = [
        Listener(
            "native",
            build_app(state, infer),
            s.host,
            s.port,
            state.tls.server_context(),
            http_protocol=native,
        )
    ]
    if s.blindai_compat:
        from blindinfer._server.compat import build_compat_listeners

        out.extend(build_compat_listeners(state))
    if s.metrics_port is not None:
        app = metrics_app(state.metrics, state.update_gauges)
        limits = dataclasses.replace(connection_limits(s), direct_body_max=0)
        out.append(
            Listener(
                "metrics",
                app,
                s.metrics_host,
                s.metrics_port,
                None,
                http_protocol=guarded(http_protocol_class(), limits),
            )
        )
    return out


def _uvicorn_server(listener: Listener, settings: Settings) -> uvicorn.Server:
    config = uvicorn.Config(
        listener.app,  # type: ignore[arg-type]
        host=listener.host,
        port=listener.port,
        log_level=settings.log_level,
        access_log=False,  # paths and timing only would be safe, but keep the hot path lean
        server_header=False,
        proxy_headers=False,  # inside a TEE, X-Forwarded-* from the operator means nothing
        date_header=False,
        lifespan="off",
        http=listener.http_protocol or "auto",  # type: ignore[arg-type]
        timeout_keep_alive=max(1, round(settings.idle_timeout)),
        timeout_graceful_shutdown=5,
        h11_max_incomplete_event_size=64 * 1024,
    )
    # uvicorn only knows key *files*, and our key must never touch a disk.
    load_config(config, listener.ssl)
    return uvicorn.Server(config)


def _bind(listener: Listener) -> socket.socket:
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    try:
        return socket.create_server((listener.host, listener.port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {listener.host}:{listener.port} for the {listener.name} API: "
            f"{exc.strerror or exc}; choose another port or stop what uses it"
        ) from None


def banner(state: ServerState, token: str | None) -> str:
    s = state.settings
    url = f"https://{s.host}:{s.port}"
    lines = [f"blindinfer ready on {url} (TEE backend: {state.backend.name})"]
    if state.backend.insecure:
        lines.append(
            "WARNING: simulation TEE: INSECURE, no hardware protection; clients must opt in "
            "with simulation_mode=True"
        )
    lines.append(f"models: {', '.join(i.name for i in state.registry.list()) or 'none'}")
    if s.blindai_compat:
        u, a, m = s.blindai_ports
        lines.append(
            f"BlindAI 0.6 ports: unattested {s.blindai_host}:{u}, run {s.blindai_host}:{a}, "
            f"management {s.blindai_management_host}:{m}"
        )
    if token is not None:
        lines.append(
            f"model owner token (shown once, keep it secret): {token}\n"
            f"  export BLINDINFER_OWNER_TOKEN={token}"
        )
    sim = " --simulation" if state.backend.insecure else ""
    names = {i.name for i in state.registry.list()}
    if "demo" in names:
        lines.append(f"try: blindinfer run {url} demo{sim} --input '[[5.1, 3.5, 1.4, 0.2]]'")
    if "mobilenet-imagenet" in names:
        lines.append(f"try: blindinfer run {url} mobilenet-imagenet{sim} --file photo.jpg")
    return "\n".join(lines)


async def serve_state(
    state: ServerState, token: str | None, started: Callable[[], None] | None = None
) -> None:
    """Serve every listener until SIGINT/SIGTERM or ``state.stop_event`` is set."""
    chosen = listeners(state)
    # Bind every socket first: a port in use is then one clear error, before anything serves.
    sockets = [_bind(lst) for lst in chosen]
    servers = [_uvicorn_server(lst, state.settings) for lst in chosen]
    tasks = [
        asyncio.create_task(srv.serve(sockets=[sock]))
        for srv, sock in zip(servers, sockets, strict=True)
    ]
    while not all(srv.started for srv in servers):
        if any(t.done() for t in tasks):
            for srv in servers:
                srv.should_exit = True
            await asyncio.gather(*tasks, return_exceptions=True)
            raise ConfigError("a listener failed to start; see the log above")
        await asyncio.sleep(0.02)
    print(banner(state, token), flush=True)
    if started is not None:
        started()

    stop = state.stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    # Runs in flight stop at their next node, so shutdown never waits on a long run.
    state.registry.watchdog.stop_all("shutdown")
    for srv in servers:
        srv.should_exit = True
    await asyncio.gather(*tasks, return_exceptions=True)
    waiter.cancel()


def tune_malloc() -> None:
    """Keep large request buffers on glibc's heap instead of fresh mmaps.

    By default every buffer over 128 KiB is a new mmap, zero-filled page by page and unmapped on
    free: a 600 KB tensor then costs ~150 page faults per request (the architecture notes
    measured 590 us -> 31 us for one encode with higher thresholds). Same effect as setting
    MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ in the environment; no-op off glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    mallopt(m_trim_threshold, 128 * 1024 * 1024)


def serve(settings: Settings) -> None:
    tune_malloc()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    state, token = build_state(settings)
    enter_empty_directory(state.settings.data_dir)
    try:
        _run(serve_state(state, token))
    finally:
        state.registry.stop_sync()
        state.registry.watchdog.stop_all("shutdown")
        state.executor.shutdown(wait=False, cancel_futures=True)
        state.attest_executor.shutdown(wait=False, cancel_futures=True)
        _exit_after(SHUTDOWN_GRACE_S)


# After the listeners have closed, worker threads get this long to finish (a run stops at its
# next node; one node of a hostile model can still take a while) before the process exits.
SHUTDOWN_GRACE_S = 5.0


def _exit_after(seconds: float) -> None:
    """Interpreter exit joins executor threads; a thread stuck in a long onnxruntime node must
    not keep a stopped server alive, so a daemon timer ends the process past the grace time."""

    def force() -> None:
        log.warning("worker threads still busy %.0f s after shutdown; exiting", seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def _run(coro: Any) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)

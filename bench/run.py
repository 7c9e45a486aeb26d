"""Benchmark: in-process onnxruntime vs the full attested server path vs tract, side by side.

    .venv/bin/python -m bench.run [--quick] [--out bench/results/latest.json]
                                  [--models mlp,resnet18,bert] [--seconds N]
                                  [--intra-op 1,0] [--profile-server FILE.prof]

Not a test: it prints a table and writes JSON. See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pstats
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tests._server import free_port, is_ready

from bench.models import NAMES, BenchModel, ensure_model
from blindinfer._client.connection import (
    Connection,
    InsecureSimulationWarning,
    fetch_evidence,
)
from blindinfer._client.connection import connect as sdk_connect
from blindinfer._engine.registry import EngineOptions, ModelRegistry, session_options

TOKEN = "bench-owner-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parent
Runner = Callable[[], object]


# --- measurement -------------------------------------------------------------------------------


def summarize(samples_ns: list[int], wall_s: float | None = None) -> dict[str, float]:
    """p50/p99/mean/min in ms; throughput = completed / wall time (or 1 / mean latency)."""
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    mean = float(a.mean())
    return {
        "n": len(samples_ns),
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": mean,
        "min_ms": float(a.min()),
        "rps": len(samples_ns) / wall_s if wall_s else 1000.0 / mean,
    }


def _run_for(fn: Runner, budget_s: float, out: list[int], min_iters: int = 1) -> None:
    clock = time.perf_counter_ns
    deadline = clock() + int(budget_s * 1e9)
    done = 0
    while done < min_iters or clock() < deadline:
        start = clock()
        fn()
        out.append(clock() - start)
        done += 1


def interleaved(
    variants: dict[str, Runner], seconds: float, rounds: int, warmup_s: float
) -> dict[str, dict[str, float]]:
    """Warm each variant up, then give each ``seconds / rounds`` per round, rotating the order
    every round so slow drifts of the shared machine hit all variants alike."""
    names = list(variants)
    for name in names:
        _run_for(variants[name], warmup_s, [], min_iters=3)
    samples: dict[str, list[int]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            _run_for(variants[name], seconds / rounds, samples[name])
    return {n: summarize(s) for n, s in samples.items()}


def concurrent(workers: list[Runner], seconds: float) -> dict[str, float]:
    """Each worker in its own thread for ``seconds``; throughput over the shared wall time."""
    for fn in workers:
        fn()  # warm: connection open, metadata cached
    samples: list[list[int]] = [[] for _ in workers]
    barrier = threading.Barrier(len(workers) + 1)

    def loop(i: int) -> None:
        barrier.wait()
        _run_for(workers[i], seconds, samples[i])

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return summarize([s for per in samples for s in per], wall)


# --- the server --------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextmanager
def server(
    workdir: Path,
    intra_op: int,
    profile: Path | None = None,
    src: Path | None = None,
    args: Sequence[str] = (),
    module: str = "blindinfer",
    env: Mapping[str, str] | None = None,
) -> Iterator[Server]:
    """A real ``blindinfer serve`` process on loopback (optionally under cProfile; ``src``:
    another checkout's ``src/`` directory, for a before/after run side by side; ``args``: more
    ``serve`` flags; ``module``: what ``python -m`` runs, given ``serve`` and its flags;
    ``env``: more environment variables)."""
    port = free_port()
    data_dir = workdir / f"data-{port}"
    log_path = workdir / f"server-{port}.log"
    prefix = [sys.executable]
    if profile is not None:
        prefix += ["-m", "cProfile", "-o", str(profile)]
    cmd = [
        *prefix, "-m", module, "serve",
        "--data-dir", str(data_dir), "--port", str(port), "--owner-token", TOKEN,
        "--log-level", "warning", "--no-demo-model", "--intra-op-threads", str(intra_op),
        *args,
    ]  # fmt: skip
    environ = {k: v for k, v in os.environ.items() if not k.startswith("BLINDINFER_")}
    if src is not None:
        environ["PYTHONPATH"] = str(src)
    environ.update(env or {})
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=environ)
    srv = Server(f"https://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + 60
        while not is_ready(srv.url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield srv
    finally:
        srv.stop()


def connect(url: str, **options: Any) -> Connection:
    """A simulation-mode connection with the bench owner token (``options``: more of
    ``blindinfer.connect``'s)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureSimulationWarning)
        return sdk_connect(url, simulation_mode=True, token=TOKEN, **options)


# --- engines in process ------------------------------------------------------------------------


def ort_session(model: BenchModel, intra_op: int) -> Any:
    """An onnxruntime session built exactly as the server builds it (engine/registry.py)."""
    opts = EngineOptions(intra_op_threads=intra_op)
    return ort.InferenceSession(
        str(model.path), session_options(opts), providers=["CPUExecutionProvider"]
    )


def ort_runner(session: Any, model: BenchModel) -> Runner:
    return lambda: session.run(None, model.inputs)


def server_runner(conn: Connection, model: BenchModel) -> Runner:
    return lambda: conn.run_model(model.name, model.inputs)


def tract_status() -> tuple[Any, dict[str, Any]]:
    try:
        import tract  # type: ignore[import-not-found,unused-ignore]
    except Exception as exc:
        reason = f"tract unavailable: {type(exc).__name__}: {exc}"
        return None, {"available": False, "reason": reason}
    version = metadata.version("tract")
    return tract, {"available": True, "version": version, "threads": 1}


def tract_runner(tract: Any, model: BenchModel) -> Runner:
    """tract (the engine BlindAI used): load, type and optimise, then one reusable state."""
    state = tract.onnx().load(str(model.path)).into_model().into_runnable().spawn_state()
    inputs = list(model.inputs.values())

    def run() -> object:
        return [t.to_numpy() for t in state.run(inputs)]

    return run


# --- the phases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    models: list[str]
    seconds: float  # per measurement (variant x model)
    rounds: int
    warmup_s: float
    intra_ops: list[int]
    threads: list[int]
    conc_seconds: float
    connects: int
    baseline: Path | None = None
    latency_only: bool = False


def measure_connect(url: str, n: int) -> dict[str, Any]:
    """connect() = evidence fetch on a fresh TLS handshake + verification; and a bare
    evidence fetch (handshake + attestation endpoint) to split the two."""
    totals: list[int] = []
    fetches: list[int] = []
    for _ in range(n):
        start = time.perf_counter_ns()
        connect(url).close()
        totals.append(time.perf_counter_ns() - start)
        start = time.perf_counter_ns()
        fetch_evidence(url, os.urandom(32), 30.0)
        fetches.append(time.perf_counter_ns() - start)
    total, fetch = summarize(totals), summarize(fetches)
    return {
        "connect": total,
        "evidence_fetch": fetch,
        "verify_ms_p50_est": total["p50_ms"] - fetch["p50_ms"],
    }


def measure_fresh_tls(conn: Connection, model: BenchModel, plan: Plan) -> dict[str, Any]:
    """One MLP request on a brand-new pinned TLS connection vs on a kept-alive one."""

    def fresh() -> object:
        c = Connection(conn.url, conn.claims, conn.certificate_der, TOKEN, 30.0)
        c._meta.update(conn._meta)  # metadata already known: time only handshake + request
        try:
            return c.run_model(model.name, model.inputs)
        finally:
            c.close()

    def keep() -> object:
        return conn.run_model(model.name, model.inputs)

    res = interleaved({"fresh_tls": fresh, "keep_alive": keep}, plan.seconds, 2, 0.2)
    res["handshake_ms_p50_est"] = {"ms": res["fresh_tls"]["p50_ms"] - res["keep_alive"]["p50_ms"]}
    return res


def measure_models(
    url: str,
    models: list[BenchModel],
    intra_op: int,
    tract: Any,
    plan: Plan,
    baseline_url: str | None = None,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    conn = connect(url)
    base = connect(baseline_url) if baseline_url else None
    try:
        for m in models:
            sess = ort_session(m, intra_op)
            variants: dict[str, Runner] = {
                "onnxruntime": ort_runner(sess, m),
                "server": server_runner(conn, m),
            }
            if base is not None:
                variants["baseline"] = server_runner(base, m)
            if m.name == "mlp":
                variants["registry"] = _registry_runner(m, intra_op)
            if tract is not None and intra_op == 1:
                try:
                    variants["tract"] = tract_runner(tract, m)
                except Exception as exc:
                    out.setdefault(m.name, {})["tract_error"] = f"{type(exc).__name__}: {exc}"
            _log(f"  {m.name} (intra_op={intra_op}): {', '.join(variants)}")
            out.setdefault(m.name, {}).update(
                interleaved(variants, plan.seconds, plan.rounds, plan.warmup_s)
            )
    finally:
        conn.close()
        if base is not None:
            base.close()
    return out


def _registry_runner(model: BenchModel, intra_op: int) -> Runner:
    """The server's engine call (signature checks + session.run) without any transport."""
    registry = ModelRegistry(None, EngineOptions(intra_op_threads=intra_op))
    registry.add(model.path.read_bytes(), name=model.name, persist=False)
    loaded = registry.resolve(model.name)
    return lambda: registry.run(loaded, model.inputs)


def measure_concurrency(url: str, models: list[BenchModel], plan: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in (m for m in models if m.name in ("mlp", "resnet18")):
        sess = ort_session(m, 1)
        per: dict[str, Any] = {}
        for n in plan.threads:
            conns = [connect(url) for _ in range(n)]
            try:
                server_workers = [server_runner(c, m) for c in conns]
                local_workers = [ort_runner(sess, m) for _ in range(n)]
                per[f"{n}"] = {
                    "server": concurrent(server_workers, plan.conc_seconds),
                    "onnxruntime": concurrent(local_workers, plan.conc_seconds),
                }
            finally:
                for c in conns:
                    c.close()
            _log(f"  {m.name} x{n} threads: {per[str(n)]['server']['rps']:.0f} req/s server")
        out[m.name] = per
    return out


def upload_all(url: str, models: list[BenchModel]) -> dict[str, float]:
    times: dict[str, float] = {}
    with connect(url) as conn:
        for m in models:
            start = time.perf_counter()
            conn.upload_model(m.path, name=m.name)
            times[m.name] = time.perf_counter() - start
    return times


# --- reporting ---------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


_PACKAGES: tuple[str, ...] = ("onnxruntime", "numpy", "onnx", "blindinfer", "uvicorn")
_PACKAGES += ("starlette", "h11", "httptools", "uvloop", "tract")


def machine_info(tract_info: dict[str, Any]) -> dict[str, Any]:
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in _PACKAGES},
        "tract": tract_info,
    }


def ratios(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for intra_key, per_model in results.items():
        for name, r in per_model.items():
            ort_p50 = r["onnxruntime"]["p50_ms"]
            row = {
                "server_over_inproc_p50": r["server"]["p50_ms"] / ort_p50,
                "added_ms_p50": r["server"]["p50_ms"] - ort_p50,
            }
            if "tract" in r:
                row["tract_over_ort_p50"] = r["tract"]["p50_ms"] / ort_p50
            if "baseline" in r:
                row["baseline_over_inproc_p50"] = r["baseline"]["p50_ms"] / ort_p50
                row["baseline_added_ms_p50"] = r["baseline"]["p50_ms"] - ort_p50
            out[f"{name}@{intra_key}"] = row
    return out


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    m = report["machine"]
    console.print(
        f"[bold]{m['cpu_model']}[/], {m['cpu_affinity']} cores usable, Python {m['python']}, "
        f"onnxruntime {m['versions']['onnxruntime']}, numpy {m['versions']['numpy']}, "
        f"tract {m['versions']['tract'] or '-'}"
    )
    lat = Table(title="Latency at batch 1 (one client, sequential)")
    for col in ("model", "threads", "engine", "n", "p50 ms", "p99 ms", "req/s"):
        lat.add_column(col, justify="left" if col in ("model", "engine") else "right")
    for intra_key, per_model in report["results"].items():
        for name, r in per_model.items():
            for engine, s in r.items():
                if not isinstance(s, dict):
                    continue
                lat.add_row(
                    name, intra_key.removeprefix("intra_op="), engine, str(s["n"]),
                    f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}", f"{s['rps']:.1f}",
                )  # fmt: skip
    console.print(lat)
    rat = Table(title="Ratios (p50)")
    cols = ["model@threads", "server / in-process", "added ms", "tract / onnxruntime"]
    with_base = any("baseline_added_ms_p50" in r for r in report["ratios"].values())
    if with_base:
        cols += ["baseline / in-process", "baseline added ms"]
    for col in cols:
        rat.add_column(col, justify="right")
    for key, r in report["ratios"].items():
        tract = r.get("tract_over_ort_p50")
        row = [
            key, f"{r['server_over_inproc_p50']:.2f}x", f"{r['added_ms_p50']:.3f}",
            f"{tract:.2f}x" if tract else "-",
        ]  # fmt: skip
        if with_base:
            row += [
                f"{r.get('baseline_over_inproc_p50', 0):.2f}x",
                f"{r.get('baseline_added_ms_p50', 0):.3f}",
            ]
        rat.add_row(*row)
    console.print(rat)
    if report.get("concurrency"):
        conc = Table(title="Concurrent throughput (intra_op=1; each thread its own Connection)")
        for col in (
            "model",
            "threads",
            "server req/s",
            "server p50",
            "server p99",
            "in-proc req/s",
        ):
            conc.add_column(col, justify="right")
        for name, per in report["concurrency"].items():
            for n, r in per.items():
                s, o = r["server"], r["onnxruntime"]
                conc.add_row(
                    name, n, f"{s['rps']:.0f}", f"{s['p50_ms']:.3f}", f"{s['p99_ms']:.3f}",
                    f"{o['rps']:.0f}",
                )  # fmt: skip
        console.print(conc)
    c = report.get("connect")
    if c:
        console.print(
            f"connect() (attestation + handshake): p50 {c['connect']['p50_ms']:.2f} ms, "
            f"p99 {c['connect']['p99_ms']:.2f} ms; of which evidence fetch p50 "
            f"{c['evidence_fetch']['p50_ms']:.2f} ms, verification ~{c['verify_ms_p50_est']:.2f} ms"
        )
    f = report.get("fresh_tls")
    if f:
        console.print(
            f"MLP request on a fresh TLS connection: p50 {f['fresh_tls']['p50_ms']:.3f} ms vs "
            f"kept-alive {f['keep_alive']['p50_ms']:.3f} ms (handshake ~"
            f"{f['handshake_ms_p50_est']['ms']:.3f} ms)"
        )
    if not report["machine"]["tract"]["available"]:
        console.print(report["machine"]["tract"]["reason"])
    console.print(f"total {report['duration_s']:.1f} s")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- profiling ---------------------------------------------------------------------------------


def profile_server(out: Path, seconds: float) -> None:
    """Run the MLP against a server started under cProfile; print where its time goes."""
    model = ensure_model("mlp")
    with tempfile.TemporaryDirectory(prefix="blindinfer-bench-") as tmp:
        with server(Path(tmp), 1, profile=out) as srv:
            upload_all(srv.url, [model])
            with connect(srv.url) as conn:
                n = 0
                deadline = time.perf_counter() + seconds
                while time.perf_counter() < deadline:
                    conn.run_model(model.name, model.inputs)
                    n += 1
        _log(f"{n} MLP requests profiled; stats in {out}")
    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


# --- main --------------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    seconds = args.seconds if args.seconds is not None else (1.0 if quick else 6.0)
    intra = [int(x) for x in args.intra_op.split(",")] if args.intra_op else [1, 0]
    return Plan(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        seconds=seconds,
        rounds=3 if quick else 5,
        warmup_s=0.2 if quick else 0.5,
        intra_ops=intra,
        threads=[1, 2, 4],
        conc_seconds=0.5 if quick else 3.0,
        connects=5 if quick else 20,
        baseline=args.baseline,
        latency_only=args.latency_only,
    )


def run(plan: Plan) -> dict[str, Any]:
    t0 = time.perf_counter()
    tract, tract_info = tract_status()
    models = [ensure_model(n) for n in plan.models]
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(tract_info),
        "plan": {k: str(v) if isinstance(v, Path) else v for k, v in plan.__dict__.items()},
        "models": {
            m.name: {"description": m.description, "size_bytes": m.path.stat().st_size}
            for m in models
        },
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="blindinfer-bench-") as tmp:
        for i, intra in enumerate(plan.intra_ops):
            with contextlib.ExitStack() as stack:
                srv = stack.enter_context(server(Path(tmp), intra))
                base = None
                if plan.baseline is not None:
                    base = stack.enter_context(server(Path(tmp), intra, src=plan.baseline))
                    upload_all(base.url, models)
                _log(f"server intra_op_threads={intra} on {srv.url}")
                report.setdefault("upload_s", {})[f"intra_op={intra}"] = upload_all(srv.url, models)
                if i == 0 and not plan.latency_only:
                    report["connect"] = measure_connect(srv.url, plan.connects)
                    mlp = next((m for m in models if m.name == "mlp"), None)
                    if mlp is not None:
                        with connect(srv.url) as conn:
                            report["fresh_tls"] = measure_fresh_tls(conn, mlp, plan)
                report["results"][f"intra_op={intra}"] = measure_models(
                    srv.url, models, intra, tract, plan, base.url if base else None
                )
                if i == 0 and not plan.latency_only:
                    report["concurrency"] = measure_concurrency(srv.url, models, plan)
    report["ratios"] = ratios(report["results"])
    report["duration_s"] = time.perf_counter() - t0
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short run (under a minute)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "latest.json")
    p.add_argument("--models", default=",".join(NAMES), help=f"subset of {','.join(NAMES)}")
    p.add_argument("--seconds", type=float, default=None, help="budget per measurement")
    p.add_argument("--intra-op", default=None, help="server/in-process thread settings [1,0]")
    p.add_argument("--profile-server", type=Path, default=None, metavar="FILE.prof")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="SRC",
        help="another checkout's src/ directory: its server runs beside this one, interleaved "
        "(same client SDK), as the 'baseline' engine",
    )
    p.add_argument(
        "--latency-only", action="store_true", help="skip connect, fresh-TLS and concurrency"
    )
    args = p.parse_args(argv)
    unknown = [m for m in args.models.split(",") if m and m not in NAMES]
    if unknown:
        p.error(f"unknown model(s) {unknown}; choose from {', '.join(NAMES)}")
    plan = make_plan(args)
    if args.profile_server is not None:
        profile_server(args.profile_server, plan.seconds * 5)
        return 0
    report = run(plan)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    print(f"JSON written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

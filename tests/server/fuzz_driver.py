"""A bounded, deterministic fuzzer for a running blindinfer server (used by test_fuzz.py).

Every request is generated from ``(seed, index)`` alone (``Generator.request``), so any finding
is reproduced by its index. Requests mutate known-good ones for the demo model and the
tests/fixtures models: OIP v2 JSON bodies, OIP binary-extension bodies (with
``Inference-Header-Content-Length``) and BlindAI 0.6 CBOR ``/run`` bodies, plus a few
``/delete`` and ``/upload`` ones. Mutations: byte flips, truncation, insertions, field deletion
and type swaps, huge numbers, deep nesting, wrong datatypes and shapes, zero-size tensors,
duplicated fields, CBOR tags, indefinite lengths and huge declared lengths.

Requests go over keep-alive TLS connections from a thread pool; every ``checkpoint`` requests
the known-good probes run again and must answer exactly what they answered at the start.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import random
import re
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from ipaddress import IPv4Address
from typing import Any
from uuid import UUID

import cbor2
import numpy as np

from blindinfer._wire.tensors import DATATYPES

Json = Any  # a JSON (or, for CBOR, CBOR-encodable) value

MAX_REPRODUCERS = 50
REPRO_BODY_MAX = 256 * 1024  # bytes of a body kept in the report (the index regenerates it all)

# --- requests -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    kind: str  # oip-json, oip-binary, blindai-run, blindai-delete, blindai-upload
    port: int
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    method: str = "POST"
    chunk: int = 0  # > 0: sent with Transfer-Encoding: chunked, in chunks of this size

    def wire(self) -> bytes:
        lines = [f"{self.method} {self.path} HTTP/1.1", "host: 127.0.0.1"]
        lines.append(
            "transfer-encoding: chunked" if self.chunk else f"content-length: {len(self.body)}"
        )
        lines += [f"{k}: {v}" for k, v in self.headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not self.chunk:
            return head + self.body
        parts = [self.body[i : i + self.chunk] for i in range(0, len(self.body), self.chunk)]
        return head + b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in parts) + b"0\r\n\r\n"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    closed: bool


@dataclass(frozen=True)
class Ports:
    native: int
    attested: int
    management: int


@dataclass(frozen=True)
class Model:
    """A model on the server: how OIP and BlindAI requests address it."""

    name: str
    model_id: str
    sha256: str


# --- HTTP/1.1 over TLS, keep-alive ----------------------------------------------------------------


def _client_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's certificate is self-signed (simulation TEE)
    return ctx


_CTX = _client_context()


class Connection:
    """One keep-alive HTTPS connection; ``exchange`` sends a request and reads its response."""

    def __init__(self, port: int, timeout: float) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = _CTX.wrap_socket(raw, server_hostname="localhost")
        self.reader = self.sock.makefile("rb")
        self.used = False

    def close(self) -> None:
        for closer in (self.reader.close, self.sock.close):
            with contextlib.suppress(OSError):
                closer()

    def exchange(self, request: Request) -> Response:
        self.used = True
        with contextlib.suppress(OSError):  # the server may have answered early and closed
            self.sock.sendall(request.wire())
        return self._read_response()

    def _read_response(self) -> Response:
        line = self.reader.readline(65537)
        if not line:
            raise ConnectionError("the server closed the connection without a response")
        status = int(line.split(None, 2)[1])
        headers: dict[bytes, bytes] = {}
        while (line := self.reader.readline(65537)) not in (b"\r\n", b"\n", b""):
            key, _, value = line.partition(b":")
            headers[key.strip().lower()] = value.strip()
        closed = headers.get(b"connection", b"").lower() == b"close"
        if b"content-length" in headers:
            body = self._read_exactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body = self._read_chunked()
        else:
            body, closed = self.reader.read(), True
        return Response(status, body, closed)

    def _read_exactly(self, n: int) -> bytes:
        data = self.reader.read(n)
        if len(data) != n:
            raise ConnectionError(f"response body cut after {len(data)} of {n} bytes")
        return data

    def _read_chunked(self) -> bytes:
        out = bytearray()
        while size := int(self.reader.readline(65537).split(b";")[0], 16):
            out += self._read_exactly(size)
            self.reader.readline(65537)
        while self.reader.readline(65537) not in (b"\r\n", b"\n", b""):
            pass
        return bytes(out)


class Pool:
    """Per-thread keep-alive connections, one per port; a stale one is replaced and retried."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.local = threading.local()

    def _conns(self) -> dict[int, Connection]:
        conns: dict[int, Connection] | None = getattr(self.local, "conns", None)
        if conns is None:
            conns = self.local.conns = {}
        return conns

    def send(self, request: Request) -> Response:
        conns = self._conns()
        conn = conns.pop(request.port, None)
        if conn is not None:
            try:
                return self._keep(conns, request.port, conn, conn.exchange(request))
            except (OSError, ValueError, IndexError):
                conn.close()  # a keep-alive connection the server had closed: retry once
        conn = Connection(request.port, self.timeout)
        try:
            return self._keep(conns, request.port, conn, conn.exchange(request))
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _keep(conns: dict[int, Connection], port: int, conn: Connection, r: Response) -> Response:
        if r.closed:
            conn.close()
        else:
            conns[port] = conn
        return r


# --- values that break parsers --------------------------------------------------------------------

# fmt: off
EVIL_SCALARS: tuple[Json, ...] = (
    None, True, False, 0, -1, 1, 3, 7, 255, 256, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 2**64,
    -(2**63) - 1, 10**30, 10**400, 1.5, -0.0, 1e-310, 1e308, -1e308, 3.5e38, 65504.0, 70000.0,
    "", "x", "FP32", "INT8", "features", "probabilities", "\u0000", "é€", "[[[{{", '\\"',
    "A" * 5000,
)
EVIL_SHAPES: tuple[Json, ...] = (
    [], [0], [0, 4], [0, 8], [1, 0], [0, 0], [2, 0, 4], [1, 4, 1], [4], [1, 5], [2, 3],
    [2**40, 2**40], [2**63], [2**64], [2**62, 4], [0, 2**70], [2**31, 2**31, 2**31],
    [-1, 4], [1, -4], [1.5, 4], [1.0, 4], [True, 4], ["1", 4], [None, 4], [[1], 4],
    [1] * 33, [1] * 64, [1] * 65, [1] * 200, [0] * 65, {"0": 1}, "1,4", 4, None,
)
EVIL_DATATYPES: tuple[Json, ...] = (
    *DATATYPES, "BYTES", "fp32", "Fp32", "", "INT128", "FP8", "FLOAT", "FP32 ", "FP32\u0000", 7,
    None, True, ["FP32"], {"t": "FP32"}, 1.5,
)
NUMBER_SWAPS: tuple[bytes, ...] = (
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400", b"9" * 5000, b"1" * 4301,
    b"-0", b"0.0", b"1E+2", b"01", b"1.", b".5", b"+1", b"0x10", b"1_000", b"true", b"null",
    b'"1"', b"[]", b"{}",
)
JSON_NOISE: tuple[bytes, ...] = (
    b"[", b"]", b"{", b"}", b'"', b",", b":", b"\\", b"\xff", b"\x00", b"\xc3", b"\xed\xa0\x80",
    b" ", b"\n", b"-", b"e", b"\\u0000", b"\\ud800", b"1",
)
HLEN_EDITS: tuple[Callable[[int, int], str], ...] = (  # (JSON length, body length) -> header
    lambda h, n: str(h + 1), lambda h, n: str(h - 1), lambda h, n: str(h + 7),
    lambda h, n: str(h - 9), lambda h, n: "0", lambda h, n: "-1", lambda h, n: str(n),
    lambda h, n: str(n + 1), lambda h, n: str(10**30), lambda h, n: str(2**63),
    lambda h, n: "9" * 5000, lambda h, n: "abc", lambda h, n: "", lambda h, n: f" {h} ",
    lambda h, n: f"+{h}", lambda h, n: f"{h}.0", lambda h, n: hex(h), lambda h, n: f"{h},{h}",
    lambda h, n: "1_0", lambda h, n: "1e3",
)
CBOR_EXOTIC: tuple[Json, ...] = (
    cbor2.CBORTag(12345, 1), cbor2.CBORTag(2, b"\xff" * 40), cbor2.CBORTag(5, [10**6, 3]),
    cbor2.CBORTag(4, [-(10**6), 3]), cbor2.CBORTag(35, "(a+)+$"),
    cbor2.CBORTag(36, "x: y\n\nz"), cbor2.CBORTag(258, [1, 2]), cbor2.CBORTag(28, [1]),
    cbor2.CBORTag(29, 0), cbor2.CBORTag(1, 2**70), cbor2.CBORTag(0, "not a date"),
    cbor2.CBORTag(30, [1, 0]), cbor2.CBORTag(37, b"short"), cbor2.CBORTag(55799, {}),
    cbor2.CBORSimpleValue(200), cbor2.undefined, datetime(2020, 1, 1, tzinfo=UTC),
    Decimal("1E+999999"), Fraction(1, 3), {1, 2, 3}, UUID(int=7), IPv4Address("10.0.0.1"),
    re.compile("a+"), 2**64, -(2**64) - 5, 10**100, float("nan"), float("inf"), float("-inf"),
    b"", b"\x00" * 3, b"\xff" * 17, bytearray(b"ab"),
)
CBOR_HEADS: tuple[bytes, ...] = (  # huge declared lengths, reserved heads, tags, breaks
    b"\x5b" + b"\xff" * 8, b"\x5b\x7f" + b"\xff" * 7, b"\x5a\xff\xff\xff\xff",
    b"\x7b" + b"\xff" * 8, b"\x9b" + b"\xff" * 8, b"\x9a\x7f\xff\xff\xff",
    b"\xbb" + b"\xff" * 8, b"\xba\xff\xff\xff\xff", b"\x5f", b"\x7f", b"\x9f", b"\xbf", b"\xff",
    b"\x1c", b"\x3f", b"\xdf", b"\xfc", b"\xf8\x00", b"\xf7", b"\xc6", b"\xd8\x23",
    b"\xdb" + b"\xff" * 8, b"\xc2\x5b" + b"\xff" * 8,
)
EVIL_SIZES: tuple[Json, ...] = (
    -1, 0, 1, 3, 15, 17, 2**31, 2**63, 2**64, 10**30, 1.5, 16.0, "16", True, None, [16], {"n": 16},
)
DATUM_TYPES: tuple[Json, ...] = (
    -1, 0, 1, 5, 10, 11, 255, 2**64, "F32", "f32", "Bool", "F16", None, 1.0,
)
HOT_JSON_KEYS = (
    "inputs", "name", "shape", "datatype", "data", "parameters", "outputs", "id",
    "binary_data_size", "binary_data_output", "binary_data",
)
HOT_CBOR_KEYS = (
    "model_id", "model_hash", "inputs", "info", "fact", "datum_type", "node_name", "bytes_data",
    "client_info", "model", "length", "model_name", "optimize",
)
BAD_REFS = (
    "nope", "demo%00", "demo/versions/2", "demo/versions/1", "..%2f..%2fetc", "%ff%fe",
    "x" * 300, "0" * 64, "DEMO",
)
DATUM_CODES = {
    "FP32": 0, "FP64": 1, "INT32": 2, "INT64": 3, "UINT32": 4, "UINT64": 5, "UINT8": 6,
    "UINT16": 7, "INT8": 8, "INT16": 9, "BOOL": 10,
}
# fmt: on


def _nested(depth: int, leaf: Json = 1) -> Json:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def evil_value(rng: random.Random, cbor: bool = False) -> Json:
    roll = rng.random()
    if cbor and roll < 0.25:
        return rng.choice(CBOR_EXOTIC)
    if roll < 0.7:
        return rng.choice(EVIL_SCALARS)
    choices: list[Callable[[], Json]] = [
        list,
        dict,
        lambda: [[]],
        lambda: [{}],
        lambda: {"": None},
        lambda: [None],
        lambda: list(range(rng.randint(0, 300))),
        lambda: _nested(rng.choice((2, 10, 64, 65, 80))),
        lambda: {f"k{i}": i for i in range(50)},
        lambda: [rng.choice(EVIL_SCALARS) for _ in range(rng.randint(1, 8))],
    ]
    return rng.choice(choices)()


# --- tree mutations (JSON and CBOR documents) -----------------------------------------------------


def copy_tree(value: Json) -> Json:
    if isinstance(value, dict):
        return {k: copy_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_tree(v) for v in value]
    return value


def _slots(doc: Json) -> list[tuple[Json, Json]]:
    """Every (container, key or index) in a document, the root excluded."""
    out: list[tuple[Json, Json]] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            out.append((node, key))
            if isinstance(child, dict | list) and len(out) < 5000:
                stack.append(child)
    return out


def _slots_named(doc: Json, names: Sequence[str]) -> list[tuple[Json, Json]]:
    return [(c, k) for c, k in _slots(doc) if isinstance(c, dict) and k in names]


def mutate_tree(rng: random.Random, doc: Json, cbor: bool, hot: Sequence[str]) -> None:
    """One random structural edit, in place: delete, swap a value's type, duplicate, targeted."""
    slots = _slots(doc)
    if not slots:
        return
    roll = rng.random()
    targeted = _slots_named(doc, hot)
    if roll < 0.45 and targeted:
        container, key = rng.choice(targeted)
        container[key] = _targeted(rng, key, container[key], cbor)
        return
    container, key = rng.choice(slots)
    if roll < 0.6:
        del container[key]
    elif roll < 0.85:
        container[key] = evil_value(rng, cbor)
    elif roll < 0.95 and isinstance(container, list):
        container.insert(key, copy_tree(container[key]))  # a duplicated list item
    else:
        container[key] = [container[key]] if rng.random() < 0.5 else {"v": container[key]}


def _targeted(rng: random.Random, key: str, old: Json, cbor: bool) -> Json:
    if key in ("shape", "fact"):
        return copy_tree(rng.choice(EVIL_SHAPES))
    if key == "datatype":
        return rng.choice(EVIL_DATATYPES)
    if key == "datum_type":
        return rng.choice(DATUM_TYPES)
    if key == "data":
        return _evil_data(rng, old)
    if key == "binary_data_size":
        return rng.choice(EVIL_SIZES)
    if key == "bytes_data" and isinstance(old, bytes):
        return rng.choice((old[:-1], old + b"\0", old[: len(old) // 2], b"", old * 2, old.hex()))
    return evil_value(rng, cbor)


def _evil_data(rng: random.Random, old: Json) -> Json:
    flat = old if isinstance(old, list) else [old]
    options: list[Callable[[], Json]] = [
        lambda: [],
        lambda: [[]],
        lambda: flat[:-1],
        lambda: [*flat, flat[0] if flat else 1],
        lambda: [str(v) for v in flat],
        lambda: [None] * len(flat),
        lambda: [True] * len(flat),
        lambda: [rng.choice(EVIL_SCALARS) for _ in flat],
        lambda: [2**64] * max(1, len(flat)),
        lambda: [10**400, *flat[1:]],
        lambda: [1e308] * max(1, len(flat)),
        lambda: [[v] for v in flat],
        lambda: [flat],
        lambda: _nested(rng.choice((3, 60, 64, 65, 70, 90)), 1.0),
        lambda: {"a": 1},
        lambda: "1,2,3,4",
        lambda: 1.5,
        lambda: [[1, 2], [3]],
    ]
    return rng.choice(options)()


# --- byte-level mutations -------------------------------------------------------------------------


def flip_bytes(rng: random.Random, body: bytes) -> bytes:
    if not body:
        return bytes([rng.randrange(256)])
    out = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(out))
        out[i] = rng.randrange(256) if rng.random() < 0.5 else out[i] ^ (1 << rng.randrange(8))
    return bytes(out)


def truncate(rng: random.Random, body: bytes) -> bytes:
    return body[: rng.randrange(len(body) + 1)]


def insert_bytes(rng: random.Random, body: bytes, noise: Sequence[bytes]) -> bytes:
    i = rng.randrange(len(body) + 1)
    piece = rng.choice(noise) if rng.random() < 0.7 else rng.randbytes(rng.randint(1, 16))
    return body[:i] + piece * rng.choice((1, 1, 2, 50)) + body[i:]


def repeat_slice(rng: random.Random, body: bytes) -> bytes:
    if len(body) < 2:
        return body * 2
    i = rng.randrange(len(body) - 1)
    j = rng.randrange(i + 1, min(len(body), i + 200) + 1)
    return body[:j] + body[i:j] * rng.choice((1, 2, 10)) + body[j:]


def byte_mutation(rng: random.Random, body: bytes, noise: Sequence[bytes]) -> bytes:
    op = rng.randrange(4)
    if op == 0:
        return flip_bytes(rng, body)
    if op == 1:
        return truncate(rng, body)
    if op == 2:
        return insert_bytes(rng, body, noise)
    return repeat_slice(rng, body)


_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_DEEP_MARK = "__fuzz_deep__"


def _duplicate_field(rng: random.Random, text: bytes) -> bytes:
    """A field given twice: inserted first in an object, or last (then it is the one json.loads
    keeps)."""
    pair = b'"' + rng.choice(HOT_JSON_KEYS).encode() + b'":' + json.dumps(evil_value(rng)).encode()
    braces = [m.start() for m in re.finditer(rb"[{}]", text)]
    if not braces:
        return text + pair
    i = rng.choice(braces)
    if text[i] == ord("{"):
        return text[: i + 1] + pair + b"," + text[i + 1 :]
    return text[:i] + b"," + pair + text[i:]


def json_text_mutation(rng: random.Random, text: bytes) -> bytes:
    op = rng.randrange(7)
    if op == 0:  # a literal Python accepts and JSON does not, or a number too long
        spans = [m.span() for m in _NUMBER.finditer(text)]
        if spans:
            a, z = rng.choice(spans)
            return text[:a] + rng.choice(NUMBER_SWAPS) + text[z:]
    if op == 1:
        return _duplicate_field(rng, text)
    if op == 2:  # encodings other than UTF-8
        return rng.choice(
            (
                b"\xef\xbb\xbf" + text,
                text.decode("latin-1").encode("utf-16"),
                text.replace(b'"', b"'"),
                text + b"\x00",
                b"\xff" + text,
            )
        )
    if op == 3:  # unbalanced or deep brackets spliced in anywhere
        i = rng.randrange(len(text) + 1)
        depth = rng.choice((10, 65, 73, 1000, 100_000))
        return text[:i] + rng.choice((b"[", b'{"a":')) * depth + text[i:]
    return byte_mutation(rng, text, JSON_NOISE)


def deep_json(rng: random.Random, doc: Json) -> bytes:
    """``doc`` with one value replaced by arrays or objects nested up to 100,000 deep."""
    slots = _slots_named(doc, ("data", "shape", "parameters", "outputs", "id", "name")) or _slots(
        doc
    )
    container, key = rng.choice(slots)
    container[key] = _DEEP_MARK
    depth = rng.choice((64, 65, 72, 73, 100, 999, 1000, 5000, 100_000))
    opener, closer = (b"[", b"]") if rng.random() < 0.7 else (b'{"a":', b"}")
    closing = closer * depth if rng.random() < 0.8 else b""  # sometimes never closed
    deep = opener * depth + b"1" + closing
    return (
        json.dumps(doc, separators=(",", ":"))
        .encode()
        .replace(json.dumps(_DEEP_MARK).encode(), deep, 1)
    )


# --- seeds ----------------------------------------------------------------------------------------

_JSON_KIND_OF = {"BOOL": "bool", "FP16": "float", "FP32": "float", "FP64": "float"}


def _values(rng: random.Random, datatype: str, n: int) -> list[Json]:
    kind = _JSON_KIND_OF.get(datatype, "int")
    if kind == "bool":
        return [rng.random() < 0.5 for _ in range(n)]
    if kind == "float":
        return [round(rng.uniform(-4, 4), 3) for _ in range(n)]
    low = 0 if datatype.startswith("U") else -100
    return [rng.randint(low, 100) for _ in range(n)]


@dataclass(frozen=True)
class TensorSeed:
    name: str
    datatype: str
    shape: tuple[int, ...]
    values: tuple[Json, ...]

    def array(self) -> np.ndarray:
        return np.array(self.values, dtype=DATATYPES[self.datatype]).reshape(self.shape)


@dataclass(frozen=True)
class Seed:
    model: Model
    tensors: tuple[TensorSeed, ...]
    outputs: tuple[str, ...]


def _tensor(rng: random.Random, name: str, datatype: str, shape: tuple[int, ...]) -> TensorSeed:
    n = int(np.prod(shape))
    return TensorSeed(name, datatype, shape, tuple(_values(rng, datatype, n)))


def build_seeds(models: dict[str, Model]) -> list[Seed]:
    rng = random.Random(1234)
    seeds: list[Seed] = []
    demo, mlp, dtypes = models["demo"], models["mlp"], models["all-dtypes"]
    for batch in (1, 2, 3, 0):
        seeds.append(
            Seed(demo, (_tensor(rng, "features", "FP32", (batch, 4)),), ("probabilities",))
        )
    for batch in (1, 2, 0):
        x = _tensor(rng, "x", "FP32", (batch, 8))
        scale = _tensor(rng, "scale", "FP32", (1,))
        seeds.append(Seed(mlp, (x, scale), ("y", "label")))
    all_inputs = tuple(_tensor(rng, f"in_{dt}", dt, (2, 3)) for dt in DATATYPES)
    seeds.append(Seed(dtypes, all_inputs, tuple(f"out_{dt}" for dt in DATATYPES)))
    seeds.append(Seed(dtypes, all_inputs[-3:-1], ("out_FP32",)))  # some inputs missing
    return seeds


def oip_doc(rng: random.Random, seed: Seed) -> Json:
    inputs = []
    for t in seed.tensors:
        nested = rng.random() < 0.3 and len(t.shape) > 1
        data = t.array().tolist() if nested else list(t.values)
        inputs.append(
            {"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": data}
        )
    doc: dict[str, Json] = {"inputs": inputs}
    if rng.random() < 0.5:
        doc["id"] = f"req-{rng.randrange(10**6)}"
    if rng.random() < 0.5:
        doc["outputs"] = [{"name": n} for n in seed.outputs]
    return doc


def oip_binary(rng: random.Random, seed: Seed) -> tuple[Json, list[bytes]]:
    inputs, blobs = [], []
    for t in seed.tensors:
        blob = t.array().tobytes()
        inputs.append(
            {
                "name": t.name,
                "shape": list(t.shape),
                "datatype": t.datatype,
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    doc: dict[str, Json] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if rng.random() < 0.5:
        doc["outputs"] = [
            {"name": n, "parameters": {"binary_data": rng.random() < 0.5}} for n in seed.outputs
        ]
    return doc, blobs


CLIENT_INFO: dict[str, Json] = {
    "uid": "0" * 32,
    "platform_name": "Linux",
    "platform_arch": "x86_64",
    "platform_version": "#1 SMP",
    "platform_release": "6.1",
    "user_agent": "blindai_python",
    "user_agent_version": "0.6.3",
    "is_colab": False,
}


def run_doc(rng: random.Random, seed: Seed) -> Json:
    """A RunModel message as the blindai 0.6.3 client builds it (cbor2.dumps of its __dict__)."""
    inputs = []
    for t in seed.tensors:
        named = rng.random() < 0.6
        info = {
            "fact": list(t.shape),
            "datum_type": DATUM_CODES.get(t.datatype, 0),
            "node_name": t.name if named else None,
        }
        inputs.append({"info": info, "bytes_data": t.array().tobytes()})
    by_hash = rng.random() < 0.3
    return {
        "model_id": "" if by_hash else rng.choice((seed.model.model_id, seed.model.name)),
        "model_hash": seed.model.sha256 if by_hash else "",
        "inputs": inputs,
        "client_info": dict(CLIENT_INFO),
    }


# --- the generator --------------------------------------------------------------------------------


class Generator:
    """Request ``index`` of the run with ``seed``: the same bytes every time."""

    def __init__(self, seed: int, ports: Ports, models: dict[str, Model]) -> None:
        self.seed = seed
        self.ports = ports
        self.seeds = build_seeds(models)

    def request(self, index: int) -> Request:
        rng = random.Random(self.seed * 1_000_003 + index)
        request = self._request(rng)
        roll = rng.random()
        if roll < 0.05:  # no Content-Length: the server reads to the end of the chunks
            chunk = rng.choice((1, 7, 1000, 65536))
            chunk = chunk if len(request.body) // chunk < 4096 else 65536  # at most ~4096 chunks
            return dataclasses.replace(request, chunk=chunk)
        if roll < 0.06 and request.kind.startswith("oip"):
            return dataclasses.replace(request, method=rng.choice(("GET", "PUT", "DELETE")))
        return request

    def _request(self, rng: random.Random) -> Request:
        roll = rng.random()
        if roll < 0.36:
            return self.oip_json(rng)
        if roll < 0.66:
            return self.oip_binary(rng)
        if roll < 0.95:
            return self.blindai_run(rng)
        if roll < 0.98:
            return self.blindai_delete(rng)
        return self.blindai_upload(rng)

    def _ref_path(self, rng: random.Random, seed: Seed) -> str:
        ref = seed.model.name
        if rng.random() < 0.15:
            ref = rng.choice((seed.model.model_id, seed.model.sha256, *BAD_REFS))
        return f"/v2/models/{ref}/infer"

    def oip_json(self, rng: random.Random) -> Request:
        seed = rng.choice(self.seeds)
        doc = oip_doc(rng, seed)
        roll = rng.random()
        if roll < 0.1:
            body = deep_json(rng, doc)
        else:
            for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
                mutate_tree(rng, doc, cbor=False, hot=HOT_JSON_KEYS)
            body = json.dumps(doc, separators=(",", ":")).encode()
            if roll > 0.65:
                body = json_text_mutation(rng, body)
        headers = (("content-type", "application/json"),)
        return Request("oip-json", self.ports.native, self._ref_path(rng, seed), headers, body)

    def oip_binary(self, rng: random.Random) -> Request:
        seed = rng.choice(self.seeds)
        doc, blobs = oip_binary(rng, seed)
        for _ in range(rng.choice((0, 1, 1, 2))):
            mutate_tree(rng, doc, cbor=False, hot=HOT_JSON_KEYS)
        header = json.dumps(doc, separators=(",", ":")).encode()
        if rng.random() < 0.15:
            header = json_text_mutation(rng, header)
        payload = b"".join(blobs)
        if rng.random() < 0.2:
            payload = byte_mutation(rng, payload, (b"\0",))
        body = header + payload
        hlen = str(len(header))
        roll = rng.random()
        if roll < 0.2:
            hlen = rng.choice(HLEN_EDITS)(len(header), len(body))
        headers = [("content-type", "application/octet-stream")]
        if roll > 0.05:  # else: no header at all, so the body is taken for JSON
            headers.append(("inference-header-content-length", hlen))
        return Request(
            "oip-binary", self.ports.native, self._ref_path(rng, seed), tuple(headers), body
        )

    def blindai_run(self, rng: random.Random) -> Request:
        seed = rng.choice(self.seeds)
        doc = run_doc(rng, seed)
        for _ in range(rng.choice((0, 1, 1, 1, 2, 3))):
            mutate_tree(rng, doc, cbor=True, hot=HOT_CBOR_KEYS)
        body = cbor_mutation(rng, _dumps(doc)) if rng.random() < 0.4 else _dumps(doc)
        return Request("blindai-run", self.ports.attested, "/run", (), body)

    def blindai_delete(self, rng: random.Random) -> Request:
        doc: Json = {"model_id": f"fuzz-missing-{rng.randrange(10**9):09d}-model"}
        for _ in range(rng.choice((0, 1, 2))):
            mutate_tree(rng, doc, cbor=True, hot=("model_id",))
        body = cbor_mutation(rng, _dumps(doc)) if rng.random() < 0.5 else _dumps(doc)
        if b"demo" in body or b"mlp" in body or b"all-dtypes" in body:
            body = _dumps({"model_id": "fuzz-missing"})  # never delete the models under test
        return Request("blindai-delete", self.ports.management, "/delete", (), body)

    def blindai_upload(self, rng: random.Random) -> Request:
        """A garbage model (never valid ONNX) in a mutated UploadModel envelope."""
        junk = rng.randbytes(rng.randint(0, 300))
        doc: Json = {
            "model": list(junk),
            "length": len(junk),
            "model_name": "fuzz.onnx",
            "optimize": True,
            "client_info": dict(CLIENT_INFO),
        }
        for _ in range(rng.choice((0, 1, 2))):
            mutate_tree(rng, doc, cbor=True, hot=("model", "length", "model_name", "optimize"))
        body = cbor_mutation(rng, _dumps(doc)) if rng.random() < 0.5 else _dumps(doc)
        return Request("blindai-upload", self.ports.management, "/upload", (), body)


def _dumps(doc: Json) -> bytes:
    try:
        return bytes(cbor2.dumps(doc))
    except (cbor2.CBOREncodeError, TypeError, ValueError):
        return bytes(cbor2.dumps(repr(doc)[:1000]))


def cbor_mutation(rng: random.Random, body: bytes) -> bytes:
    op = rng.randrange(6)
    if op == 0:  # a huge declared length, a reserved head, a tag or a break spliced in
        i = rng.randrange(len(body) + 1)
        return body[:i] + rng.choice(CBOR_HEADS) + body[i:]
    if op == 1 and body and 0xA0 <= body[0] <= 0xB7:  # the top map as an indefinite-length one
        return b"\xbf" + body[1:] + b"\xff"
    if op == 2:  # the whole message nested deep, or tagged
        return (
            rng.choice((b"\x81", b"\xa1\x00", b"\xc1", b"\xd8\x1c"))
            * rng.choice((1, 8, 9, 400, 100_000))
            + body
        )
    return byte_mutation(rng, body, CBOR_HEADS)


# --- the run --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    label: str
    request: Request


@dataclass
class Finding:
    index: int  # -1 for a probe
    kind: str
    status: int | None  # None: no response
    request: Request
    response: bytes
    error: str = ""

    def to_json(self) -> dict[str, Json]:
        r = self.request
        return {
            "index": self.index,
            "kind": self.kind,
            "status": self.status,
            "port": r.port,
            "path": r.path,
            "headers": [list(h) for h in r.headers],
            "body_length": len(r.body),
            "body_base64": base64.b64encode(r.body[:REPRO_BODY_MAX]).decode(),
            "response": self.response[:2000].decode("utf-8", "replace"),
            "error": self.error,
        }


@dataclass
class FuzzReport:
    seed: int
    count: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    server_errors: list[Finding] = field(default_factory=list)
    no_response: list[Finding] = field(default_factory=list)
    probe_mismatches: list[str] = field(default_factory=list)
    checkpoints: int = 0
    seconds: float = 0.0
    rss_before_kib: int = 0
    rss_after_kib: int = 0
    rss_trend_kib: list[int] = field(default_factory=list)  # at each checkpoint
    server_alive: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, index: int, request: Request, response: Response | None, error: str) -> None:
        status = response.status if response is not None else None
        with self.lock:
            self.count += 1
            self.statuses[str(status)] += 1
            self.by_kind[f"{request.kind} {status}"] += 1
            body = response.body if response is not None else b""
            finding = Finding(index, request.kind, status, request, body, error)
            if status is None and len(self.no_response) < MAX_REPRODUCERS:
                self.no_response.append(finding)
            elif status is not None and status >= 500 and len(self.server_errors) < MAX_REPRODUCERS:
                self.server_errors.append(finding)

    def server_error_count(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "None" and int(s) >= 500)

    def to_json(self) -> dict[str, Json]:
        return {
            "seed": self.seed,
            "count": self.count,
            "statuses": dict(sorted(self.statuses.items())),
            "by_kind": dict(sorted(self.by_kind.items())),
            "server_error_count": self.server_error_count(),
            "server_errors": [f.to_json() for f in self.server_errors],
            "no_response_count": self.statuses.get("None", 0),
            "no_response": [f.to_json() for f in self.no_response],
            "probe_mismatches": self.probe_mismatches,
            "checkpoints": self.checkpoints,
            "seconds": round(self.seconds, 1),
            "rss_before_kib": self.rss_before_kib,
            "rss_after_kib": self.rss_after_kib,
            "rss_trend_kib": self.rss_trend_kib,
            "server_alive": self.server_alive,
        }


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class FuzzConfig:
    ports: Ports
    models: dict[str, Model]
    pid: int
    count: int = 20_000
    seed: int = 20_240_601
    threads: int = 6
    checkpoint: int = 1000
    timeout: float = 60.0


def build_probes(ports: Ports, models: dict[str, Model]) -> list[Probe]:
    """Known-good requests: each must answer 200, and the same bytes, all through the run."""
    rng = random.Random(99)
    seeds = build_seeds(models)
    probes: list[Probe] = []
    for i, seed in enumerate(seeds[:8]):
        if i % 2 == 0:
            body = json.dumps(oip_doc(rng, seed), separators=(",", ":")).encode()
            request = Request(
                "oip-json",
                ports.native,
                f"/v2/models/{seed.model.name}/infer",
                (("content-type", "application/json"),),
                body,
            )
        else:
            doc, blobs = oip_binary(rng, seed)
            header = json.dumps(doc, separators=(",", ":")).encode()
            request = Request(
                "oip-binary",
                ports.native,
                f"/v2/models/{seed.model.name}/infer",
                (("inference-header-content-length", str(len(header))),),
                header + b"".join(blobs),
            )
        probes.append(Probe(f"{request.kind} {seed.model.name} #{i}", request))
    body = json.dumps(oip_doc(rng, seeds[7]), separators=(",", ":")).encode()
    probes.append(
        Probe(
            "oip-json all-dtypes",
            Request("oip-json", ports.native, "/v2/models/all-dtypes/infer", (), body),
        )
    )
    for seed in (seeds[0], seeds[3], seeds[4], seeds[6]):  # demo [1,4], [0,4]; mlp [1,8], [0,8]
        body = _dumps(run_doc(rng, seed))
        probes.append(
            Probe(
                f"blindai-run {seed.model.name}",
                Request("blindai-run", ports.attested, "/run", (), body),
            )
        )
    return probes


def _probe_all(pool: Pool, probes: Sequence[Probe]) -> list[tuple[int, bytes]]:
    out = []
    for probe in probes:
        try:
            r = pool.send(probe.request)
            out.append((r.status, r.body))
        except (OSError, ValueError, IndexError) as exc:
            out.append((-1, f"{type(exc).__name__}: {exc}".encode()))
    return out


def _batches(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(count, start + size))


def run_fuzz(config: FuzzConfig, alive: Callable[[], bool]) -> FuzzReport:
    gen = Generator(config.seed, config.ports, config.models)
    probes = build_probes(config.ports, config.models)
    report = FuzzReport(config.seed)
    probe_pool = Pool(config.timeout)
    baseline = _probe_all(probe_pool, probes)
    for probe, (status, body) in zip(probes, baseline, strict=True):
        if status != 200:
            report.probe_mismatches.append(
                f"{probe.label}: baseline status {status}: {body[:300]!r}"
            )
    report.rss_before_kib = rss_kib(config.pid)
    pool = Pool(config.timeout)

    def one(index: int) -> None:
        request = gen.request(index)
        try:
            report.record(index, request, pool.send(request), "")
        except (OSError, ValueError, IndexError) as exc:
            report.record(index, request, None, f"{type(exc).__name__}: {exc}")

    start = time.monotonic()
    with ThreadPoolExecutor(config.threads) as executor:
        for batch in _batches(config.count, config.checkpoint):
            list(executor.map(one, batch))
            report.checkpoints += 1
            _check_probes(report, probe_pool, probes, baseline, batch.stop)
            if not alive():
                report.server_alive = False
                break
            report.rss_trend_kib.append(rss_kib(config.pid))
    report.seconds = time.monotonic() - start
    report.rss_after_kib = rss_kib(config.pid) if alive() else 0
    report.server_alive = report.server_alive and alive()
    return report


def _check_probes(
    report: FuzzReport,
    pool: Pool,
    probes: Sequence[Probe],
    baseline: Sequence[tuple[int, bytes]],
    after: int,
) -> None:
    for probe, want, got in zip(probes, baseline, _probe_all(pool, probes), strict=True):
        if got != want:
            report.probe_mismatches.append(
                f"after {after} requests, {probe.label}: status {got[0]} (was {want[0]}), "
                f"body {got[1][:200]!r}"
            )

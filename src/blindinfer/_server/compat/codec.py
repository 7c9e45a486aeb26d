"""CBOR (RFC 8949) codec for the BlindAI 0.6 messages: UploadModel (streamed), RunModel,
DeleteModel and the replies, with the datum-type tables of the 0.6.3 client."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Final, cast

import cbor2
import numpy as np

from blindinfer._wire.tensors import datatype_of, to_wire_bytes
from blindinfer.errors import (
    InvalidInput,
    PayloadTooLarge,
)

# BlindAI 0.6 ``ModelDatumType`` codes, in the client's enum order (blindai/client.py), as OIP
# datatypes, and the names the client accepts back (``ModelDatumType[name]``).
DATUM_TYPES: Final[tuple[str, ...]] = (
    "FP32", "FP64", "INT32", "INT64", "UINT32", "UINT64", "UINT8", "UINT16", "INT8", "INT16",
    "BOOL",
)  # fmt: skip
DATUM_NAMES: Final[tuple[str, ...]] = (
    "F32", "F64", "I32", "I64", "U32", "U64", "U8", "U16", "I8", "I16", "Bool",
)  # fmt: skip
_DATUM_BY_DATATYPE: Final[dict[str, int]] = {dt: i for i, dt in enumerate(DATUM_TYPES)}
_DATUM_BY_NAME: Final[dict[str, int]] = {n.upper(): i for i, n in enumerate(DATUM_NAMES)}

SMALL_ITEM_LIMIT = 64 * 1024  # any field but the model itself
MAX_ID_LENGTH = 256  # model ids are 36 characters, names at most 128, hashes 64
BODY_OVERHEAD = 1024 * 1024  # what an upload body may hold beyond the model's 1-2 bytes per byte
MAX_SMALL_DEPTH = 8
MAX_DIMS = 32
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


# --- CBOR: small items (RFC 8949 section 3), decoded by cbor2 -------------------------------------


class _NeedMore(Exception):
    """The buffer ends inside the item being decoded; feed more bytes."""


Buffer = bytes | bytearray


def _head(buf: Buffer | memoryview, pos: int) -> tuple[int, int, int]:
    """The initial byte and argument of the item at ``pos`` (RFC 8949 section 3): (major,
    argument, next position), ``argument`` -1 for an indefinite length. Only for the containers
    decoded a piece at a time (the UploadModel map and model, the RunModel tensors); every
    item inside them is decoded by cbor2."""
    if pos >= len(buf):
        raise _NeedMore
    initial = buf[pos]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, pos + 1
    if info <= 27:
        end = pos + 1 + (1 << (info - 24))
        if end > len(buf):
            raise _NeedMore
        return major, int.from_bytes(buf[pos + 1 : end], "big"), end
    if info == 31 and major in (2, 3, 4, 5, 7):
        return major, -1, pos + 1
    raise InvalidInput("malformed CBOR: an initial byte is not well-formed")


class _Reader:
    """A seekable binary file over a memoryview for ``cbor2.CBORDecoder``: copies only the bytes
    cbor2 reads (``io.BytesIO`` would copy a whole bytearray body first). ``end`` bounds what
    cbor2 may read, so an item that runs past it ends in ``CBORDecodeEOF``."""

    __slots__ = ("_end", "_view", "pos")

    def __init__(self) -> None:
        self.bind(_NO_BYTES)

    def bind(self, view: memoryview, end: int | None = None) -> None:
        self._view = view
        self.pos = 0
        self._end = len(view) if end is None else min(end, len(view))

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = offset + (0, self.pos, self._end)[whence]
        self.pos = pos if 0 <= pos <= self._end else max(0, min(pos, self._end))
        return self.pos

    def read(self, size: int = -1) -> bytes:
        start = self.pos
        end = self._end if size < 0 or start + size > self._end else start + size
        self.pos = max(start, end)
        return self._view[start:end].tobytes()


def _refuse_tag(value: object, immutable: bool) -> object:
    raise InvalidInput("CBOR tags are not supported in BlindAI messages")


class _NoTags(dict[int, Callable[[object, bool], object]]):
    """cbor2's semantic decoders, every tag (its own too: dates, regular expressions, MIME,
    shared references, sets...) refused before any of them runs."""

    def __missing__(self, tag: int) -> Callable[[object, bool], object]:
        return _refuse_tag


_NO_TAGS: Final = _NoTags()
_NO_BYTES: Final = memoryview(b"")
_READ_SIZE = 256  # cbor2 reads ahead this much (then seeks back): small items fit in one read


class _Decoders(threading.local):
    """Each thread's cbor2 decoders (one per nesting depth, built once: building one costs
    about as much as decoding a small map) over its one ``_Reader``, bound to a body while it
    is decoded. Decoders refuse containers deeper than MAX_SMALL_DEPTH, indefinite lengths,
    duplicate map keys and every tag."""

    def __init__(self) -> None:
        self.reader = _Reader()
        self._by_depth: dict[int, cbor2.CBORDecoder] = {}

    def at(self, depth: int) -> cbor2.CBORDecoder:
        decoder = self._by_depth.get(depth)
        if decoder is None:
            decoder = self._by_depth[depth] = cbor2.CBORDecoder(
                cast("IO[bytes]", self.reader),
                tag_hook=_refuse_tag,
                semantic_decoders=_NO_TAGS,
                read_size=_READ_SIZE,
                max_depth=MAX_SMALL_DEPTH - depth,
                allow_indefinite=False,
                allow_duplicate_keys=False,
            )
        return decoder

    def discard(self) -> None:
        """After a failed decode: cbor2's read-ahead state is not reused."""
        self._by_depth.clear()


_DECODERS: Final = _Decoders()


_FIELDS: Final = frozenset(
    {"model", "length", "model_name", "optimize", "client_info", "model_id", "model_hash",
     "inputs", "info", "bytes_data", "fact", "datum_type", "node_name"}
)  # fmt: skip
_RESERVED_INFO = re.compile(r"subtype 0x1[cde]\b")


def _twice(key: object) -> InvalidInput:
    """A map key that appears twice, named only if it is a BlindAI field (no client text)."""
    if isinstance(key, str) and key in _FIELDS:
        return InvalidInput(f"the CBOR map key {key!r} appears twice")
    return InvalidInput("a CBOR map key appears twice")


def _refusal(exc: cbor2.CBORDecodeError) -> InvalidInput:
    """cbor2's decode error as our message (cbor2's own text can quote the input)."""
    cause = exc.__cause__
    if isinstance(cause, InvalidInput):  # raised by a hook of ours
        return cause
    if isinstance(cause, UnicodeDecodeError):
        return InvalidInput("a CBOR text string is not valid UTF-8")
    text = str(exc)
    if "nesting depth" in text:
        return InvalidInput(f"CBOR items nested more than {MAX_SMALL_DEPTH} levels deep")
    if "Duplicate map key: " in text:
        shown = text.partition("Duplicate map key: ")[2]
        return _twice(next((f for f in _FIELDS if repr(f) == shown), None))
    if _RESERVED_INFO.search(text) or (
        "indefinite length" in text and ("integer" in text or "semantic tag" in text)
    ):
        return InvalidInput("malformed CBOR: an initial byte is not well-formed")
    if "indefinite length" in text:
        return InvalidInput("indefinite-length CBOR items are not supported here")
    if "break code" in text or "special value" in text:
        return InvalidInput("unsupported CBOR simple value")
    return InvalidInput("malformed CBOR")


_LEAVES: Final = frozenset({str, int, bytes, bool, float, type(None)})
_KEYS: Final = frozenset({str, int, bool})


def _plain(value: object) -> object:
    """cbor2's result held to the values BlindAI messages use: text or integer map keys, no
    simple values but false/true/null/undefined (undefined read as null), nothing a tag made.
    Depth is bounded by the decoder (MAX_SMALL_DEPTH)."""
    kind = type(value)
    if kind in _LEAVES:
        return value
    if kind is list:
        items = cast("list[object]", value)
        if not _LEAVES.issuperset(map(type, items)):
            for i, item in enumerate(items):
                items[i] = _plain(item)
        return items
    if kind is dict:
        entries = cast("dict[object, object]", value)
        if not _KEYS.issuperset(map(type, entries)):
            raise InvalidInput("CBOR map keys must be text or integers here")
        if not _LEAVES.issuperset(map(type, entries.values())):
            for key, item in entries.items():
                entries[key] = _plain(item)
        return entries
    if value is cbor2.undefined:
        return None
    if kind is cbor2.CBORSimpleValue:
        raise InvalidInput("unsupported CBOR simple value")
    raise InvalidInput("CBOR tags are not supported in BlindAI messages")


def _decode(decoder: cbor2.CBORDecoder) -> object:
    """One complete small item at the decoder's position; ``_NeedMore`` if the bytes end
    inside it. cbor2 allocates with the bytes it reads, not with declared lengths (a string
    declared 2**64 bytes long is read 64 KiB at a time and ends in EOF; arrays and maps grow
    item by item)."""
    try:
        value = decoder.decode()
    except cbor2.CBORDecodeEOF:
        _DECODERS.discard()
        raise _NeedMore from None
    except cbor2.CBORDecodeError as exc:
        _DECODERS.discard()
        raise _refusal(exc) from None
    except BaseException:
        _DECODERS.discard()
        raise
    return value if type(value) in _LEAVES else _plain(value)


def _small_item(buf: Buffer, depth: int) -> tuple[object, int]:
    """The small item at the start of ``buf`` (at most SMALL_ITEM_LIMIT bytes) and its size."""
    view = memoryview(buf)
    reader = _DECODERS.reader
    try:
        reader.bind(view, SMALL_ITEM_LIMIT)
        value = _decode(_DECODERS.at(depth))
        return value, reader.tell()
    finally:
        reader.bind(_NO_BYTES)
        view.release()  # the upload buffer is resized right after


def _shown(value: object) -> str:
    """A client-sent value as quoted in an error message: bounded, and cheap to build (never the
    repr of a whole 64 MiB string)."""
    if isinstance(value, list | dict):
        return f"{_cbor_type(value)} of {len(value)} items"
    if isinstance(value, str | bytes | memoryview):
        head = value[:60]
        text = repr(bytes(head) if isinstance(head, memoryview) else head)
        return text + "..." if len(value) > 60 else text
    return repr(value)[:80]


# --- CBOR: the model as an array of unsigned integers 0..255 -----------------------------------

_WINDOW = 1 << 20  # bytes decoded per numpy pass
_MODEL_FIRST_ALLOC = 1 << 20  # the model buffer starts at this size and doubles as bytes arrive
_MIN_BATCH = 256 * 1024  # wait for this much before a pass (fewer, larger numpy calls)


@dataclass(frozen=True)
class _Window:
    values: np.ndarray  # the decoded bytes of the complete elements
    consumed: int  # input bytes used
    pending: bool  # the window ended on 0x18 whose one-byte argument is in the next window
    bad: int  # position of the first byte that does not start a 0..255 integer, or -1
    bad_index: int  # that element's index within this window


def _decode_window(b: np.ndarray, remaining: int) -> _Window:
    """Decode up to ``remaining`` elements from ``b`` (position 0 starts an element).

    Each element is one unsigned integer (major type 0): 0x00..0x17 stand for themselves, 0x18 is
    followed by a one-byte argument (RFC 8949 section 3, additional information 24). In a run of
    0x18 bytes that begins on an element start, the bytes alternate: element start, argument,
    start...; the byte after an odd-length run is an argument too; every other byte starts an
    element. Runs are sparse, so element boundaries come from a few vectorised passes with no
    per-element Python work. Decoding stops after ``remaining`` elements: what follows belongs to
    the enclosing map.
    """
    n = len(b)
    is24 = b == 0x18
    edges = np.diff(is24.view(np.int8), prepend=np.int8(0), append=np.int8(0))
    run_begin = np.flatnonzero(edges == 1)
    run_end = np.flatnonzero(edges == -1)  # one past the run
    run_len = run_end - run_begin
    heads = (run_len + 1) // 2  # 0x18 bytes of each run that start an element
    prefix = np.zeros(n, dtype=bool)  # 0x18 bytes that start an element (dropped)
    if len(heads) and int(heads.max()) == 1:
        prefix[run_begin] = True
    elif len(heads):
        nth = np.arange(int(heads.sum())) - np.repeat(np.cumsum(heads) - heads, heads)
        prefix[np.repeat(run_begin, heads) + 2 * nth] = True
    start = ~(is24 & ~prefix)  # arguments inside runs are not starts
    after_odd = run_end[(run_len & 1) == 1]
    start[after_odd[after_odd < n]] = False  # the argument of a run's last 0x18
    cut = n
    if np.count_nonzero(start) > remaining:
        cut = int(np.flatnonzero(start)[remaining])
    seg, seg_start = b[:cut], start[:cut]
    bad_mask = seg_start & (seg > 0x18)
    if bad_mask.any():
        bad = int(np.argmax(bad_mask))
        index = int(np.count_nonzero(seg_start[:bad]))
        return _Window(np.empty(0, np.uint8), 0, False, bad, index)
    values = seg[~prefix[:cut]]
    pending = cut == n and n > 0 and bool(prefix[n - 1])
    return _Window(values, cut, pending, -1, 0)


def _bad_element(initial: int, index: int) -> InvalidInput:
    major = initial >> 5
    if major == 0:
        return InvalidInput(
            f"model element #{index} is larger than 255: the model must be a CBOR array of "
            "byte values 0..255"
        )
    return InvalidInput(
        f"model element #{index} is not an unsigned integer (CBOR major type {major}): the "
        "model must be a CBOR array of byte values 0..255"
    )


@dataclass(frozen=True)
class UploadRequest:
    model: bytes
    length: int | None
    model_name: str | None
    optimize: bool


_MAP_HEAD, _KEY, _VALUE, _MODEL_HEAD, _ARRAY, _BYTES, _DONE = range(7)


class UploadDecoder:
    """Incremental decoder of the 0.6 ``UploadModel`` message (a CBOR map).

    ``{"model": [uint 0..255, ...], "length": uint, "model_name": text, "optimize": bool,
    "client_info": map}`` in any key order. The model array is written into one buffer as it
    streams in, grown with the bytes that arrived (never to a declared length ahead of them);
    every element is checked to be 0..255, the real byte count (not the declared ``length``) is
    held to ``max_model_size``, and the body to twice that plus 1 MiB. A definite-length byte
    string is accepted for ``model`` too. Feed chunks, then ``finish()``.
    """

    def __init__(self, max_model_size: int) -> None:
        self.max_model_size = max_model_size
        self.max_body = 2 * max_model_size + BODY_OVERHEAD
        self._buf = bytearray()
        self._received = 0
        self._state = _MAP_HEAD
        self._entries_left = 0
        self._key = ""
        self._fields: dict[str, object] = {}
        self._model: np.ndarray | None = None
        self._written = 0
        self._remaining = 0
        self._pending = False
        self._retry_at = 0  # an incomplete item is decoded again once the buffer is this long

    # -- public ---------------------------------------------------------------------------------

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self._received += len(chunk)
        if self._received > self.max_body:
            raise PayloadTooLarge(
                f"the upload body is over {self.max_body} bytes, more than a model of the server "
                f"limit of {self.max_model_size} bytes (setting max_model_size) can take"
            )
        self._buf += chunk
        self._advance(final=False)

    def finish(self) -> UploadRequest:
        self._advance(final=True)
        if self._state != _DONE:
            raise InvalidInput(
                f"the upload body is truncated: it ended after {self._received} bytes, inside "
                f"{self._where()}"
            )
        if self._buf:
            raise InvalidInput(f"{len(self._buf)} unexpected byte(s) after the UploadModel map")
        if self._model is None:
            raise InvalidInput("the UploadModel message has no 'model' field")
        model = self._model[: self._written].tobytes()
        self._model = None
        return UploadRequest(model, *self._checked_fields(len(model)))

    # -- state machine --------------------------------------------------------------------------

    def _where(self) -> str:
        if self._state in (_ARRAY, _BYTES):
            return f"the model after {self._written} bytes"
        return "the map header" if self._state == _MAP_HEAD else f"field {self._key!r}"

    def _consume(self, n: int) -> None:
        del self._buf[:n]

    def _advance(self, final: bool) -> None:
        step = {
            _MAP_HEAD: self._map_head,
            _KEY: self._map_key,
            _VALUE: self._map_value,
            _MODEL_HEAD: self._model_head,
            _ARRAY: self._array,
            _BYTES: self._bytes,
        }
        if not final and len(self._buf) < self._retry_at:
            return  # still short of what the last attempt found missing
        while self._state != _DONE:
            try:
                if not step[self._state](final):
                    break
            except _NeedMore:
                if len(self._buf) > SMALL_ITEM_LIMIT:
                    raise InvalidInput(
                        f"{self._where()} is over {SMALL_ITEM_LIMIT} bytes or malformed"
                    ) from None
                # Decoding again on every chunk would be quadratic for a client that sends an
                # item (up to SMALL_ITEM_LIMIT bytes) a byte at a time: wait for twice as much.
                self._retry_at = min(2 * len(self._buf), SMALL_ITEM_LIMIT + 1)
                break
            self._retry_at = 0
        if self._state == _DONE and self._buf:
            raise InvalidInput(f"unexpected byte(s) after the UploadModel map: {len(self._buf)}")

    def _next_entry(self) -> None:
        self._entries_left -= 1
        self._state = _KEY if self._entries_left > 0 else _DONE

    def _map_head(self, final: bool) -> bool:
        major, arg, pos = _head(self._buf, 0)
        if major != 5:
            raise InvalidInput(
                f"the upload body must be a CBOR map (UploadModel), not CBOR major type {major}"
            )
        if arg < 0:
            raise InvalidInput("indefinite-length maps are not supported for UploadModel")
        self._consume(pos)
        self._entries_left = arg
        self._state = _KEY if arg else _DONE
        return True

    def _map_key(self, final: bool) -> bool:
        key, pos = _small_item(self._buf, 0)
        if not isinstance(key, str):
            raise InvalidInput(f"UploadModel keys must be text strings, got {type(key).__name__}")
        if key in self._fields or (key == "model" and self._model is not None):
            raise InvalidInput(f"field {key!r} appears twice in the UploadModel message")
        self._consume(pos)
        self._key = key
        self._state = _MODEL_HEAD if key == "model" else _VALUE
        return True

    def _map_value(self, final: bool) -> bool:
        value, pos = _small_item(self._buf, 0)
        self._consume(pos)
        self._fields[self._key] = value
        self._next_entry()
        return True

    def _model_head(self, final: bool) -> bool:
        major, count, pos = _head(self._buf, 0)
        if major not in (2, 4):
            raise InvalidInput(
                "'model' must be a CBOR array of byte values (or a byte string), not CBOR major "
                f"type {major}"
            )
        if count < 0:
            raise InvalidInput("'model' must have a definite length (indefinite CBOR length)")
        if count > self.max_model_size:
            raise PayloadTooLarge(
                f"the model is {count} bytes, over the server limit of {self.max_model_size} "
                "bytes (setting max_model_size)"
            )
        self._consume(pos)
        self._model = np.empty(min(count, _MODEL_FIRST_ALLOC), dtype=np.uint8)
        self._remaining = count
        self._state = _ARRAY if major == 4 else _BYTES
        if count == 0:
            self._next_entry()
        return True

    def _reserve(self, extra: int) -> np.ndarray:
        """The model buffer, with room for ``extra`` more bytes: it grows (doubling) with the
        bytes received, up to the declared count, never ahead of them."""
        model = self._model
        assert model is not None
        need = self._written + extra
        if need > len(model):
            limit = self._written + self._remaining
            grown = np.empty(min(limit, max(need, 2 * len(model))), dtype=np.uint8)
            grown[: self._written] = model[: self._written]
            self._model = model = grown
        return model

    def _bytes(self, final: bool) -> bool:
        take = min(len(self._buf), self._remaining)
        self._reserve(take)[self._written : self._written + take] = np.frombuffer(
            self._buf, dtype=np.uint8, count=take
        )
        self._consume(take)
        self._written += take
        self._remaining -= take
        if self._remaining:
            return False
        self._next_entry()
        return True

    def _array(self, final: bool) -> bool:
        if not final and len(self._buf) < _MIN_BATCH:
            return False
        used = 0
        while self._remaining and used < len(self._buf):
            used += self._array_pass(used)
        self._consume(used)
        if self._remaining:
            return False
        self._next_entry()
        return True

    def _array_pass(self, offset: int) -> int:
        """Decode one window of the buffer at ``offset``; returns the bytes used."""
        avail = min(len(self._buf) - offset, _WINDOW)
        b = np.frombuffer(self._buf, dtype=np.uint8, count=avail, offset=offset)
        if self._pending:  # the argument byte of a 0x18 that ended the previous window
            self._reserve(1)[self._written] = b[0]
            self._written += 1
            self._remaining -= 1
            self._pending = False
            return 1
        win = _decode_window(b, self._remaining)
        if win.bad >= 0:
            raise _bad_element(int(b[win.bad]), self._written + win.bad_index)
        k = len(win.values)
        self._reserve(k)[self._written : self._written + k] = win.values
        self._written += k
        self._remaining -= k
        self._pending = win.pending
        return win.consumed

    def _checked_fields(self, size: int) -> tuple[int | None, str | None, bool]:
        f = self._fields
        length = f.get("length")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool)):
            raise InvalidInput("'length' must be an unsigned integer")
        if length is not None and length != size:
            raise InvalidInput(
                f"'length' says {length} bytes but the model has {size} bytes; the server "
                "trusts only the bytes it received"
            )
        name = f.get("model_name")
        if name is not None and not isinstance(name, str):
            raise InvalidInput("'model_name' must be a text string")
        optimize = f.get("optimize", True)
        if not isinstance(optimize, bool):
            raise InvalidInput("'optimize' must be a boolean")
        return length, name, optimize


# --- CBOR: RunModel and DeleteModel --------------------------------------------------------------


@dataclass(frozen=True)
class InputTensor:
    datatype: str  # OIP datatype
    shape: tuple[int, ...]
    node_name: str | None
    data: bytes | memoryview  # a view into the request body


@dataclass(frozen=True)
class RunRequest:
    ref: str  # a model id, or the hex sha256 of the model
    by_hash: bool
    inputs: tuple[InputTensor, ...]


class _Message:
    """A complete RunModel / DeleteModel body, read from the front. cbor2 decodes every item but
    the containers that lead to the tensors (the top map, ``inputs``, each tensor map), whose
    heads are read here so that each ``bytes_data`` comes back as a view into the body, not a
    copy (it is most of the body)."""

    def __init__(self, view: memoryview, fp: _Reader) -> None:
        self.view = view
        self.fp = fp

    def item(self, depth: int) -> object:
        return _decode(_DECODERS.at(depth))

    def _count(self, major: int) -> int | None:
        """The length of the definite container of ``major`` that starts here, its head read;
        else None (cbor2 decodes the item, or refuses it)."""
        kind, count, end = _head(self.view, self.fp.pos)
        if kind != major or count < 0:
            return None
        self.fp.pos = end
        return count

    def _key(self, depth: int) -> object:
        """A map key: the short ASCII text keys of BlindAI directly, anything else by cbor2."""
        view, fp = self.view, self.fp
        pos = fp.pos
        size = (view[pos] if pos < len(view) else 0) - 0x60
        if 0 <= size < 24:  # a text string under 24 bytes (RFC 8949 section 3.1)
            raw = view[pos + 1 : pos + 1 + size].tobytes()
            if len(raw) == size and raw.isascii():  # else cbor2 decodes (and checks) it
                fp.pos = pos + 1 + size
                return raw.decode("ascii")
        return self.item(depth)

    def _entries(self, count: int, depth: int, value: Callable[[object], object]) -> object:
        """A map of ``count`` entries at ``depth`` (each entry uses at least one byte, so a
        huge declared count ends in ``_NeedMore``)."""
        entries: dict[object, object] = {}
        for _ in range(count):
            key = self._key(depth + 1)
            if not isinstance(key, str | int):
                raise InvalidInput("CBOR map keys must be text or integers here")
            if key in entries:
                raise _twice(key)
            entries[key] = value(key)
        return entries

    def document(self, tensors: bool) -> object:
        count = self._count(5) if tensors else None
        if count is None:
            return self.item(0)
        return self._entries(
            count, 0, lambda key: self._inputs() if key == "inputs" else self.item(1)
        )

    def _inputs(self) -> object:
        count = self._count(4)
        if count is None:
            return self.item(1)
        return [self._tensor() for _ in range(count)]

    def _tensor(self) -> object:
        count = self._count(5)
        if count is None:
            return self.item(2)
        return self._entries(
            count, 2, lambda key: self._bytes() if key == "bytes_data" else self.item(3)
        )

    def _bytes(self) -> object:
        kind, size, start = _head(self.view, self.fp.pos)
        if kind != 2 or size < 0:
            return self.item(3)
        if start + size > len(self.view):
            raise _NeedMore
        self.fp.pos = start + size
        return self.view[start : start + size]


def _message(body: bytes | bytearray, what: str, tensors: bool = False) -> Mapping[object, object]:
    """A complete RunModel / DeleteModel body: one CBOR map, nothing after it. With ``tensors``,
    the ``bytes_data`` of the inputs are views into ``body`` (no copy of the tensors)."""
    view, reader = memoryview(body), _DECODERS.reader
    reader.bind(view)
    try:
        doc = _Message(view, reader).document(tensors)
        end = reader.tell()
    except _NeedMore:
        raise InvalidInput(
            f"the {what} body is truncated or is not CBOR: it ended after {len(body)} bytes, "
            "inside an item"
        ) from None
    finally:
        reader.bind(_NO_BYTES)  # the body is not kept alive by the reader
    if end != len(body):
        raise InvalidInput(f"{len(body) - end} unexpected byte(s) after the {what} message")
    return _map(doc, f"the {what} message")


def _map(value: object, what: str) -> Mapping[object, object]:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a CBOR map, got {_cbor_type(value)}")
    return value


def _text_or_empty(doc: Mapping[object, object], key: str) -> str:
    value = doc.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInput(f"'{key}' must be a text string, got {_cbor_type(value)}")
    if len(value) > MAX_ID_LENGTH:
        raise InvalidInput(f"'{key}' is {len(value)} characters long, over {MAX_ID_LENGTH}")
    return value


def _cbor_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return {
        int: "an integer",
        float: "a float",
        str: "a text string",
        bytes: "a byte string",
        memoryview: "a byte string",
        list: "an array",
        dict: "a map",
    }.get(type(value), type(value).__name__)


def _datum_type(value: object, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(DATUM_TYPES):
        return DATUM_TYPES[value]
    if isinstance(value, str) and value.upper() in _DATUM_BY_NAME:
        return DATUM_TYPES[_DATUM_BY_NAME[value.upper()]]
    raise InvalidInput(
        f"{where}: unknown datum_type {_shown(value)}; BlindAI datum types are 0..10 "
        f"({', '.join(DATUM_NAMES)})"
    )


def _shape(value: object, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise InvalidInput(f"{where}: 'fact' (the shape) must be a list of at most {MAX_DIMS} dims")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise InvalidInput(f"{where}: 'fact' (the shape) must hold non-negative integers")
    return tuple(value)


def _input_tensor(item: object, i: int) -> InputTensor:
    where = f"input #{i}"
    doc = _map(item, where)
    info = _map(doc.get("info"), f"{where} 'info'")
    data = doc.get("bytes_data")
    if not isinstance(data, bytes | memoryview):
        raise InvalidInput(f"{where}: 'bytes_data' must be a CBOR byte string")
    name = info.get("node_name")
    if name is not None and not isinstance(name, str):
        raise InvalidInput(f"{where}: 'node_name' must be a text string or null")
    if name is not None:
        where = f"input {_shown(name)}"
    return InputTensor(
        _datum_type(info.get("datum_type"), where), _shape(info.get("fact"), where), name, data
    )


def decode_run(body: bytes | bytearray) -> RunRequest:
    """Parse a 0.6 ``RunModel``: exactly one of model_id / model_hash, a list of tensors."""
    doc = _message(body, "RunModel", tensors=True)
    model_id = _text_or_empty(doc, "model_id")
    model_hash = _text_or_empty(doc, "model_hash")
    if bool(model_id) == bool(model_hash):
        raise InvalidInput(
            "set exactly one of 'model_id' and 'model_hash' (both are "
            f"{'set' if model_id else 'empty'})"
        )
    if model_hash and not _HEX64.fullmatch(model_hash):
        raise InvalidInput(
            "'model_hash' must be the sha256 of the model as 64 hex digits, got "
            f"{model_hash[:80]!r}"
        )
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    tensors = tuple(_input_tensor(item, i) for i, item in enumerate(inputs))
    return RunRequest(model_hash.lower() or model_id, bool(model_hash), tensors)


def decode_delete(body: bytes | bytearray) -> str:
    doc = _message(body, "DeleteModel")
    model_id = _text_or_empty(doc, "model_id")
    if not model_id:
        raise InvalidInput("'model_id' is missing or empty in the DeleteModel message")
    return model_id


# --- CBOR encoders (RFC 8949 section 3; preferred serialization, section 4.2.1) -----------------


def _enc_head(major: int, n: int) -> bytes:
    if n < 24:
        return bytes([major << 5 | n])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if n < 1 << (8 * size):
            return bytes([major << 5 | info]) + n.to_bytes(size, "big")
    raise ValueError("CBOR argument too large")


def _enc_text(s: str) -> bytes:
    raw = s.encode()
    return _enc_head(3, len(raw)) + raw


def encode_upload_reply(sha256_hex: str, model_id: str) -> bytes:
    """``SendModelReply``: {hash: 32 raw bytes, model_id: text}."""
    digest = bytes.fromhex(sha256_hex)
    return b"".join(
        [
            _enc_head(5, 2),
            _enc_text("hash"),
            _enc_head(2, len(digest)),
            digest,
            _enc_text("model_id"),
            _enc_text(model_id),
        ]
    )


def datum_code(array: np.ndarray, name: str) -> int:
    dt = datatype_of(array)
    code = _DATUM_BY_DATATYPE.get(dt)
    if code is None:
        raise InvalidInput(
            f"output {name!r} is {dt}, which the BlindAI 0.6 client cannot represent; use the "
            "blindinfer SDK for this model"
        )
    return code


def encode_run_reply(outputs: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """``RunModelReply``: {outputs: [{info: {fact, datum_type: "F32".., node_name}, bytes_data}]}.

    Written by hand around the raw tensor bytes: no re-encoding of the tensor data."""
    parts: list[bytes | memoryview] = [_enc_head(5, 1), _enc_text("outputs")]
    parts.append(_enc_head(4, len(outputs)))
    for name, array in outputs:
        code = datum_code(array, name)
        data = to_wire_bytes(array)
        parts += [_enc_head(5, 2), _enc_text("info"), _enc_head(5, 3), _enc_text("fact")]
        parts.append(_enc_head(4, array.ndim))
        parts += [_enc_head(0, int(d)) for d in array.shape]
        parts += [_enc_text("datum_type"), _enc_text(DATUM_NAMES[code])]
        parts += [_enc_text("node_name"), _enc_text(name)]
        parts += [_enc_text("bytes_data"), _enc_head(2, len(data)), data]
    return b"".join(parts)


def encode_error(message: str) -> bytes:
    return _enc_text(message)


CBOR_NULL: Final = b"\xf6"

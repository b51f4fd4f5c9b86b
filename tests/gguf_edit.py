"""Write copies of a GGUF file with edited metadata: the hostile model files of the fault tests.

A GGUF file is a header (key/values, tensor infos), padding to ``general.alignment``, then the
tensor data, whose offsets count from the start of the data. So a copy can change, add or drop
any key — a longer name, a huge layer count, a nested array — and stay a loadable file: the
header is written anew, padded again, and the data copied as it is.
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# GGUF value type ids (gguf.h) and their struct codes; 8 is a string, 9 an array.
SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
STRING, ARRAY = 8, 9
UINT32, INT32, UINT64, FLOAT32 = 4, 5, 10, 6


@dataclass(frozen=True)
class Array:
    """An array value: its element type and its items (an item of an ARRAY array is an Array)."""

    elem_type: int
    items: list[Any]


@dataclass(frozen=True)
class Raw:
    """A value written as these bytes, as they are (an array nested deeper than a writer that
    recurses could write, say); its type id is the edit's."""

    data: bytes


def nested_array(depth: int, leaf: int = 7) -> tuple[int, Raw]:
    """An edit value: ``depth`` arrays, each holding the next, the innermost one int32
    ``leaf``."""
    head = struct.pack("<IQ", ARRAY, 1) * (depth - 1)
    return ARRAY, Raw(head + struct.pack("<IQi", INT32, 1, leaf))


@dataclass
class Header:
    """The parsed parts of a GGUF header that a copy writes again."""

    version: int
    n_tensors: int
    kvs: dict[str, tuple[int, Any]]  # key -> (value type, value)
    tensor_infos: bytes
    data_offset: int


class _Reader:
    def __init__(self, buf: bytes) -> None:
        self.buf, self.pos = buf, 0

    def take(self, code: str) -> Any:
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += struct.calcsize(code)
        return value

    def string(self) -> str:
        n = self.take("Q")
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="surrogateescape")

    def value(self, vtype: int) -> Any:
        if vtype in SCALARS:
            return self.take(SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        elem, count = self.take("I"), self.take("Q")
        return Array(elem, [self.value(elem) for _ in range(count)])


def _encode_string(text: str) -> bytes:
    raw = text.encode("utf-8", errors="surrogateescape")
    return struct.pack("<Q", len(raw)) + raw


def encode_value(vtype: int, value: Any) -> bytes:
    """The bytes of one value of GGUF type ``vtype`` (no type id in front)."""
    if isinstance(value, Raw):
        return value.data
    if vtype in SCALARS:
        return struct.pack("<" + SCALARS[vtype], value)
    if vtype == STRING:
        return _encode_string(value)
    head = struct.pack("<IQ", value.elem_type, len(value.items))
    return head + b"".join(encode_value(value.elem_type, item) for item in value.items)


def read(path: Path) -> Header:
    """Parse the header of the GGUF file at ``path``."""
    with open(path, "rb") as fh:
        buf = fh.read(64 << 20)  # the default model's header (a 49k vocabulary) is ~2 MB
    cur = _Reader(buf)
    assert buf[:4] == b"GGUF", path
    cur.pos = 4
    version, n_tensors, n_kv = cur.take("I"), cur.take("Q"), cur.take("Q")
    kvs = {}
    for _ in range(n_kv):
        key = cur.string()
        vtype = cur.take("I")
        kvs[key] = (vtype, cur.value(vtype))
    start = cur.pos
    for _ in range(n_tensors):
        cur.string()
        n_dims = cur.take("I")
        cur.pos += 8 * n_dims + 4 + 8
    align = kvs.get("general.alignment", (UINT32, 32))[1]
    data_offset = -(-cur.pos // align) * align
    return Header(version, n_tensors, kvs, buf[start : cur.pos], data_offset)


def write_copy(src: Path, dst: Path, edits: dict[str, Any], *, drop: tuple[str, ...] = ()) -> Path:
    """Copy the GGUF file ``src`` to ``dst`` with the metadata ``edits`` applied.

    An edit's value is ``(value_type, value)``, or a bare value that keeps the key's type (a new
    key then needs the tuple). Keys in ``drop`` are removed. The tensor data is copied unchanged.
    """
    head = read(src)
    kvs = dict(head.kvs)
    for key in drop:
        kvs.pop(key, None)
    for key, edit in edits.items():
        kvs[key] = edit if isinstance(edit, tuple) else (kvs[key][0], edit)
    parts = [b"GGUF", struct.pack("<IQQ", head.version, head.n_tensors, len(kvs))]
    for key, (vtype, value) in kvs.items():
        parts += [_encode_string(key), struct.pack("<I", vtype), encode_value(vtype, value)]
    parts.append(head.tensor_infos)
    header = b"".join(parts)
    align = kvs.get("general.alignment", (UINT32, 32))[1]
    header += b"\0" * (-len(header) % align)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(header)
        fin.seek(head.data_offset)
        shutil.copyfileobj(fin, fout, 16 << 20)
    return Path(dst)

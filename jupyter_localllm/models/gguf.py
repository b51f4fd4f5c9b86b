"""A pure-Python reader for GGUF file headers (versions 2 and 3).

It reads the metadata key/values and the tensor infos, which is enough to show what a model is
and to tell a complete file from a truncated one, without loading llama.cpp. The file is
memory-mapped, so skipping a 150,000-entry vocabulary costs no copies.

Layout (little endian): ``b"GGUF"``, version u32, tensor_count u64, kv_count u64; then kv_count
entries (key string, value type u32, value); then tensor_count infos (name string, n_dims u32,
dims u64[n_dims], ggml type u32, offset u64); then padding to ``general.alignment``; then the
tensor data. A string is a u64 byte length followed by UTF-8 bytes.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidModelFileError

__all__ = ["GGUF_MAGIC", "ArraySummary", "GGUFHeader", "read_header"]

GGUF_MAGIC = b"GGUF"
_FIXED_HEADER = 24  # magic + version u32 + tensor_count u64 + kv_count u64
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 8  # ggml has 4; anything far above that is corruption, not a real tensor
# Arrays of arrays are legal in the format but llama.cpp reads none; a few levels are kept, a
# deeper nest is refused (it is read without recursion, so no depth can exhaust the stack).
MAX_NESTING = 8

# GGUF value type id -> (name, struct code or None for string/array, byte size)
_VALUE_TYPES: dict[int, tuple[str, str | None, int]] = {
    0: ("uint8", "B", 1),
    1: ("int8", "b", 1),
    2: ("uint16", "H", 2),
    3: ("int16", "h", 2),
    4: ("uint32", "I", 4),
    5: ("int32", "i", 4),
    6: ("float32", "f", 4),
    7: ("bool", "?", 1),
    8: ("string", None, 0),
    9: ("array", None, 0),
    10: ("uint64", "Q", 8),
    11: ("int64", "q", 8),
    12: ("float64", "d", 8),
}
_STRING, _ARRAY = 8, 9

# ggml_type id -> (elements per block, bytes per block), from ggml.c's type_traits. A tensor of
# a type missing here makes the data-size check stand down rather than guess.
GGML_BLOCK_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
}


@dataclass(frozen=True)
class ArraySummary:
    """Stands in for a metadata array too long to keep (a tokenizer vocabulary, say)."""

    item_type: str
    """GGUF type name of the elements, e.g. ``"string"`` or ``"int32"``."""
    length: int
    """Number of elements in the file."""

    def __repr__(self) -> str:
        return f"<array of {self.length:,} {self.item_type}>"


@dataclass(frozen=True)
class GGUFHeader:
    """What :func:`read_header` found in a GGUF file."""

    version: int
    tensor_count: int
    kv_count: int
    metadata: dict[str, Any]
    """Key/values in file order; long arrays are :class:`ArraySummary` objects."""
    file_size: int
    data_offset: int | None
    """Where tensor data starts; ``None`` when tensor infos were not read."""
    data_end: int | None
    """Where the last tensor's data ends; ``None`` when not read or a tensor type is unknown."""


class _Cursor:
    """Reads little-endian values from a buffer, raising a 'truncated' error at its end."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.size = len(buf)
        self.path = path
        self.pos = 0

    def need(self, n: int, what: str) -> None:
        if self.pos + n > self.size:
            raise InvalidModelFileError(
                f"{self.path} is truncated: its {what} runs to byte {self.pos + n:,} but the file "
                f"has only {self.size:,} bytes; re-download it."
            )

    def scalar(self, code: str, size: int, what: str) -> Any:
        self.need(size, what)
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return self.scalar("I", 4, what)

    def u64(self, what: str) -> int:
        return self.scalar("Q", 8, what)

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_string(self, what: str) -> None:
        n = self.u64(what)
        self.need(n, what)
        self.pos += n


def _corrupt(path: Path, detail: str) -> InvalidModelFileError:
    return InvalidModelFileError(
        f"{path} is corrupt or from a newer GGUF version ({detail}); re-download it or update "
        "jupyter-localllm."
    )


def _value(cur: _Cursor, vtype: int, key: str, max_array: int) -> Any:
    what = f"metadata value {key!r}"
    if vtype == _STRING:
        return cur.string(what)
    if vtype == _ARRAY:
        return _array(cur, key, max_array)
    spec = _VALUE_TYPES.get(vtype)
    if spec is None:
        raise _corrupt(cur.path, f"metadata key {key!r} has unknown value type {vtype}")
    _, code, size = spec
    return cur.scalar(code, size, what)


def _array(cur: _Cursor, key: str, max_array: int) -> Any:
    """One array value; nested arrays are walked with an explicit stack, not recursion."""
    what = f"metadata array {key!r}"
    root: list[Any] = []
    # Each frame: [item type, items left, kept items (None when summarised)]
    stack: list[list[Any]] = []
    _open_array(cur, key, max_array, stack, root, what)
    while stack:
        frame = stack[-1]
        if frame[1] == 0:
            stack.pop()
            continue
        frame[1] -= 1
        if len(stack) >= MAX_NESTING:
            raise _corrupt(cur.path, f"metadata array {key!r} nests arrays over {MAX_NESTING} deep")
        keep = max_array if frame[2] is not None else 0
        _open_array(cur, key, keep, stack, frame[2], what)
    return root[0]


def _open_array(
    cur: _Cursor, key: str, max_array: int, stack: list, parent: list | None, what: str
) -> None:
    """Read an array's header and its scalar or string items; push it when it holds arrays."""
    item_type = cur.u32(what)
    n = cur.u64(what)
    spec = _VALUE_TYPES.get(item_type)
    if spec is None:
        raise _corrupt(cur.path, f"metadata array {key!r} has unknown item type {item_type}")
    name, code, size = spec
    keep = n <= max_array
    values: list[Any] | None = None
    if code is not None:
        cur.need(n * size, what)  # checked before unpacking, so a bogus n allocates nothing
        values = list(struct.unpack_from(f"<{n}{code}", cur.buf, cur.pos)) if keep else None
        cur.pos += n * size
    elif item_type == _STRING:
        if keep:
            values = [cur.string(what) for _ in range(n)]
        else:
            for _ in range(n):
                cur.skip_string(what)
    else:
        cur.need(n * 12, what)  # each item is at least a type and a length: no runaway loop
        values = [] if keep else None
        stack.append([item_type, n, values])
    if parent is not None:
        parent.append(values if keep else ArraySummary(name, n))


def _tensor_data_end(cur: _Cursor, count: int) -> int | None:
    """Read ``count`` tensor infos; return the largest offset+size, or None if unsure."""
    end, sure = 0, True
    for i in range(count):
        what = f"tensor info #{i}"
        cur.skip_string(what)
        n_dims = cur.u32(what)
        if n_dims > _MAX_DIMS:
            raise _corrupt(cur.path, f"tensor #{i} claims {n_dims} dimensions")
        cur.need(8 * n_dims, what)
        dims = struct.unpack_from(f"<{n_dims}Q", cur.buf, cur.pos)
        cur.pos += 8 * n_dims
        ggml_type = cur.u32(what)
        offset = cur.u64(what)
        n_elements = 1
        for d in dims:
            n_elements *= d
        block = GGML_BLOCK_SIZES.get(ggml_type)
        if block is None or n_elements % block[0]:
            sure = False  # a type newer than this table: don't guess its size
            continue
        end = max(end, offset + n_elements // block[0] * block[1])
    return end if sure else None


def read_header(path: Path, *, max_array_length: int = 64, tensors: bool = True) -> GGUFHeader:
    """Parse the header of the GGUF file at ``path`` (which must exist and be a regular file).

    Raises :class:`InvalidModelFileError` for a file that is not GGUF, is truncated, uses an
    unsupported version or is corrupt. ``tensors=False`` stops after the metadata.
    """
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < len(GGUF_MAGIC):
            f.seek(0)
            raise _not_gguf(path, f.read())
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(buf, path, max_array_length, tensors)


def _parse(buf: mmap.mmap, path: Path, max_array: int, tensors: bool) -> GGUFHeader:
    if buf[:4] != GGUF_MAGIC:
        raise _not_gguf(path, buf[:64])
    cur = _Cursor(buf, path)
    cur.pos = 4
    version = cur.u32("header")
    if version not in (2, 3):
        raise _bad_version(path, version)
    tensor_count = cur.u64("header")
    kv_count = cur.u64("header")
    metadata: dict[str, Any] = {}
    for i in range(kv_count):
        key = cur.string(f"metadata key #{i}")
        vtype = cur.u32(f"metadata key {key!r}")
        metadata[key] = _value(cur, vtype, key, max_array)
    data_offset = data_end = None
    if tensors:
        tensor_end = _tensor_data_end(cur, tensor_count)
        alignment = metadata.get("general.alignment", _DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0:
            alignment = _DEFAULT_ALIGNMENT
        data_offset = -(-cur.pos // alignment) * alignment
        data_end = None if tensor_end is None else data_offset + tensor_end
    return GGUFHeader(
        version=version,
        tensor_count=tensor_count,
        kv_count=kv_count,
        metadata=metadata,
        file_size=cur.size,
        data_offset=data_offset,
        data_end=data_end,
    )


def _bad_version(path: Path, version: int) -> InvalidModelFileError:
    if version == 1:
        return InvalidModelFileError(
            f"{path} uses GGUF version 1, which llama.cpp no longer reads; download a newer "
            "conversion of the model."
        )
    if int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
        return InvalidModelFileError(
            f"{path} is a big-endian GGUF file, which this machine cannot load; download the "
            "little-endian conversion of the model."
        )
    return _corrupt(path, f"GGUF version {version}; this reader knows versions 2 and 3")


def _not_gguf(path: Path, head: bytes) -> InvalidModelFileError:
    """The error for a file without the GGUF magic, with a hint for the usual suspects."""
    text = head.lstrip().lower()
    if text.startswith(b"version https://git-lfs"):
        hint = "it is a Git LFS pointer; run `git lfs pull` or download the file itself"
    elif text.startswith((b"<!doctype html", b"<html", b"<?xml")):
        hint = "it is a web page, probably a failed download; download the .gguf file again"
    elif len(head) >= 10 and head[8:10] == b'{"':
        hint = "it looks like safetensors; convert it with llama.cpp's convert_hf_to_gguf.py"
    else:
        hint = "pass a .gguf file, or convert the model with llama.cpp's convert_hf_to_gguf.py"
    return InvalidModelFileError(
        f"{path} is not a GGUF file (it starts with {bytes(head[:8])!r}, not b'GGUF'); {hint}."
    )

"""Read and write `.safetensors` files without torch, without pickle and without trusting them.

The format (github.com/huggingface/safetensors): 8 bytes, the little-endian length N of a JSON
header; N bytes of JSON, `{name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}` plus an
optional `"__metadata__"` of strings; then the tensors' bytes, little-endian and C-ordered, with
offsets counted from the end of the header. Nothing in a file runs: it is parsed as JSON and read
as raw bytes.

A hostile file cannot make the reader use unbounded time or memory: only regular files are
opened; the header length must fit the file and `MAX_HEADER_BYTES` before a byte of it is read;
`MAX_TENSORS` entries and `MAX_RANK` dimensions at most; every entry's dtype must be known, its
shape's bytes must equal its offsets' span, and the spans must tile the data exactly (no overlap,
no gap, nothing out of range or left over), as the format's own reader requires.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from vgg_flax.formats.pth import _open_regular
from vgg_flax.weights.atomic import atomic_write

# The format's dtype names and the numpy dtype of each (little-endian).
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}

# The reader's budget. A VGG's header is a few KB (about 40 tensors); these sit far above any
# real weight file and far below what would hurt the machine (the format's own cap is 100 MB).
MAX_HEADER_BYTES = 8 << 20
MAX_TENSORS = 1 << 16
MAX_RANK = 8
METADATA_KEY = "__metadata__"
# The tensor names a VGG's safetensors file may use (see vgg_flax.weights.folder).
LAYOUTS = ("torchvision", "timm", "vgg-flax")
_LENGTH = struct.Struct("<Q")


class SafetensorsError(ValueError):
    """A file that is not a well-formed safetensors file (corrupt, truncated or hostile)."""


def read_safetensors(
    path: str | os.PathLike, *, mmap_file: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """`({name: array}, metadata)` of a `.safetensors` file, every entry checked first.

    `mmap_file=True` maps the file: the arrays are read-only views of it, which must stay
    unchanged while they live; False reads the data into memory. Raises `SafetensorsError`
    (a ValueError) naming the file and the problem for anything but a well-formed file.
    """
    path = os.fspath(path)
    with _open_regular(path) as file:
        size = os.fstat(file.fileno()).st_size
        entries, metadata, start = _read_header(file, size, path)
        if mmap_file and size > start:
            buffer: Any = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        else:
            buffer, start = file.read(size - start), 0
    tensors = {}
    for name, (dtype, shape, begin, _) in entries.items():
        count = math.prod(shape)
        if not count:
            tensors[name] = np.zeros(shape, dtype)
            continue
        try:
            array = np.frombuffer(buffer, dtype, count, start + begin)
        except ValueError as error:  # the file shrank after it was measured
            raise SafetensorsError(f"{path}: tensor {name!r} is cut short ({error})") from None
        tensors[name] = array.reshape(shape)
    return tensors, metadata


def _read_header(
    file: Any, size: int, path: str
) -> tuple[dict[str, tuple[np.dtype, tuple[int, ...], int, int]], dict[str, str], int]:
    """The checked entries, the metadata and the data's start offset of an open file."""
    if size < _LENGTH.size:
        raise SafetensorsError(f"{path}: {size} bytes is too short for a safetensors file")
    (length,) = _LENGTH.unpack(file.read(_LENGTH.size))
    if length > size - _LENGTH.size:
        raise SafetensorsError(
            f"{path}: its header length {length} runs past the end of the file ({size} bytes): "
            "the file is truncated or not a safetensors file"
        )
    if length > MAX_HEADER_BYTES:
        raise SafetensorsError(
            f"{path}: its JSON header is {length} bytes, over the reader's budget of "
            f"{MAX_HEADER_BYTES} (MAX_HEADER_BYTES); a VGG's header is a few KB"
        )
    text = file.read(length)
    if len(text) != length or not text.startswith(b"{"):
        raise SafetensorsError(f"{path}: its header is not a JSON object")
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as error:
        raise SafetensorsError(f"{path}: its header is not valid JSON ({error})") from None
    metadata = header.pop(METADATA_KEY, None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise SafetensorsError(f"{path}: {METADATA_KEY} must map strings to strings")
    if len(header) > MAX_TENSORS:
        raise SafetensorsError(
            f"{path}: {len(header)} tensors, over the reader's budget of {MAX_TENSORS}"
        )
    data_size = size - _LENGTH.size - length
    entries = {name: _entry(name, value, path) for name, value in header.items()}
    _check_tiling(entries, data_size, path)
    return entries, metadata, _LENGTH.size + length


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        names = [name for name, _ in pairs]
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ValueError(f"keys given twice: {twice[:5]}")
    return result


def _entry(name: str, value: Any, path: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """One header entry as (dtype, shape, begin, end), or SafetensorsError saying what is wrong."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(value, dict) or set(value) != {"dtype", "shape", "data_offsets"}:
        raise SafetensorsError(f"{where} needs exactly dtype, shape and data_offsets")
    dtype = DTYPES.get(value["dtype"]) if isinstance(value["dtype"], str) else None
    if dtype is None:
        known = ", ".join(DTYPES)
        raise SafetensorsError(f"{where} has dtype {value['dtype']!r}; known: {known}")
    shape, offsets = value["shape"], value["data_offsets"]
    if not _ints(shape) or len(shape) > MAX_RANK:
        raise SafetensorsError(
            f"{where} has shape {shape!r}: it must be at most {MAX_RANK} non-negative integers"
        )
    if not _ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise SafetensorsError(f"{where} has data_offsets {offsets!r}: give [begin, end]")
    begin, end = offsets
    expected = math.prod(shape) * dtype.itemsize
    if end - begin != expected:
        raise SafetensorsError(
            f"{where}: {value['dtype']} of shape {tuple(shape)} is {expected} bytes, but its "
            f"data_offsets span {end - begin}"
        )
    return dtype, tuple(shape), begin, end


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    )


def _check_tiling(entries: Mapping[str, tuple[Any, Any, int, int]], size: int, path: str) -> None:
    """The entries' byte ranges must cover the data exactly: no overlap, gap or overrun."""
    position = 0
    for name, (_, _, begin, end) in sorted(entries.items(), key=lambda item: item[1][2:]):
        if end > size:
            raise SafetensorsError(
                f"{path}: tensor {name!r} ends at byte {end} of the data, past its {size} bytes"
            )
        if begin != position:
            problem = "overlaps the tensor before it" if begin < position else "leaves a gap"
            raise SafetensorsError(
                f"{path}: tensor {name!r} at bytes {begin}-{end} {problem} (expected it at "
                f"{position}); the offsets are corrupt"
            )
        position = end
    if position != size:
        raise SafetensorsError(
            f"{path}: {size - position} bytes after the last tensor belong to none; the file "
            "is corrupt or not what its header says"
        )


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, Any],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `{name: array}` (and string `metadata`) as a `.safetensors` file, atomically.

    Arrays are stored little-endian and C-ordered in their dtype (one of `DTYPES`); the header
    is padded to 8 bytes as the format's writer does, so every tensor starts aligned.
    """
    arrays = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    header: dict[str, Any] = {}
    if metadata:
        header[METADATA_KEY] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, array in arrays.items():
        dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
        if dtype not in _NAMES:
            raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which safetensors lacks")
        arrays[name] = array.astype(dtype, copy=False)
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with atomic_write(path) as file:
        file.write(_LENGTH.pack(len(text)) + text)
        for array in arrays.values():
            file.write(memoryview(array.reshape(-1).view(np.uint8)))

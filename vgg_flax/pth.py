"""Read PyTorch checkpoints into numpy arrays, without torch and without running code from the file.

Both of torch's formats are read: the zip format (torch >= 1.6: `data.pkl` plus one archive member
per storage) and the legacy format (`_use_new_zipfile_serialization=False`, torchvision's 2017
files: magic number, protocol, system info, the object pickle, the storage keys, then the raw
storages). The pickles go through a restricted unpickler that knows only the few globals a state
dict needs; anything else (a whole `nn.Module`, `os.system`, ...) is refused before it can run.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

# torch's storage classes as they appear in pickles, and the element type each holds.
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}

# torch.serialization's constants for the legacy format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# A non-contiguous tensor is copied; a few stored bytes with zero strides could otherwise ask
# for any amount of memory.
_MAX_EXPANDED_BYTES = 1 << 33


class PthError(ValueError):
    """A file that is not a readable PyTorch checkpoint (corrupt, truncated or unsupported)."""


class UnsafePickleError(PthError, pickle.UnpicklingError):
    """A checkpoint whose pickle asks for a global outside the allowed few; nothing was run."""


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclasses.dataclass(frozen=True, slots=True)
class _Storage:
    """A storage (or, in old files, a view of one) by key; its bytes are looked up at the end."""

    key: str
    dtype: np.dtype
    numel: int
    byte_offset: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class _Tensor:
    """A tensor's place in a storage; read into an array once every storage is loaded."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _Tensor:
    # Covers _rebuild_tensor and _rebuild_tensor_v2: requires_grad, hooks and metadata are dropped.
    if not isinstance(storage, _Storage):
        raise PthError(f"a tensor refers to {type(storage).__name__}, not to a storage")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in ints):
        raise PthError(f"a tensor has a non-integer offset, size or stride: {ints}")
    if len(size) != len(stride):
        raise PthError(f"a tensor's size {tuple(size)} and stride {tuple(stride)} differ in rank")
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    # nn.Parameter(data): only the data matters here.
    return data


# The only globals a pickle may name: each maps to a harmless stand-in defined above.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding="utf-8")  # as torch.load: Python 2 pickles' str
        self._persistent = persistent_load

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused global {module}.{name}: a checkpoint may only hold tensors, numbers, "
                "strings and (ordered) dicts, and nothing from the file was run. If it holds a "
                "whole model, save `model.state_dict()` instead"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise PthError(f"unexpected persistent id {pid!r} outside the tensor pickle")
        return self._persistent(pid)


def load_pth(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (zip or legacy format) into `{name: numpy array}` safely.

    No code from the file runs and torch is not needed. Tensors come back in their stored dtype
    (float32, float16, bfloat16 via ml_dtypes, int64, ...); a `{"state_dict": ...}` or
    `{"model": ...}` wrapper is unwrapped. `mmap=True` maps the file instead of reading it: the
    arrays are then read-only views of the file, which must stay unchanged while they live.
    Raises `PthError` (a ValueError) for a corrupt, truncated or unsupported file.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            if zipfile.is_zipfile(file):
                obj, buffers = _load_zip(file, path, mmap)
            else:
                file.seek(0)
                obj, buffers = _load_legacy(file, path, mmap)
        return _state_dict(_materialize(obj, buffers, path), path)
    except (PthError, OSError):
        raise
    except Exception as error:  # a damaged pickle can fail in many ways
        raise PthError(
            f"{path} is corrupt, truncated or not a PyTorch checkpoint "
            f"({type(error).__name__}: {error})"
        ) from error


def _load_zip(file: BinaryIO, path: str, mmap: bool) -> tuple[Any, dict[str, np.ndarray]]:
    with zipfile.ZipFile(file) as archive:
        names = set(archive.namelist())
        pickles = [name for name in names if name.endswith("/data.pkl") or name == "data.pkl"]
        if len(pickles) != 1:
            kind = "a TorchScript archive" if any("/code/" in n for n in names) else "a zip file"
            raise PthError(
                f"{path} is {kind} without one data.pkl, not a torch.save checkpoint; "
                "save the model with torch.save(model.state_dict(), path)"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode().strip()
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            _, storage_type, key, _location, numel = _storage_pid(pid, 5)
            member = f"{prefix}data/{key}"
            if member not in names:
                raise PthError(f"{path}: storage {key!r} is missing from the archive")
            size = archive.getinfo(member).file_size
            if size != numel * storage_type.dtype.itemsize:
                raise PthError(
                    f"{path}: storage {key!r} holds {size} bytes, its pickle says "
                    f"{numel} x {storage_type.dtype}"
                )
            storages[key] = _Storage(key, _native(storage_type.dtype, byteorder), numel)
            return storages[key]

        with archive.open(pickles[0]) as data:
            obj = _RestrictedUnpickler(io.BytesIO(data.read()), persistent_load).load()
        mapped = _map(file) if mmap else None
        buffers = {
            key: _member_bytes(file, archive, f"{prefix}data/{key}", mapped) for key in storages
        }
    return obj, buffers


def _map(file: BinaryIO) -> np.ndarray | None:
    position = file.tell()  # np.memmap moves the file position
    mapped = np.memmap(file, np.uint8, mode="r") if os.fstat(file.fileno()).st_size else None
    file.seek(position)
    return mapped


def _member_bytes(
    file: BinaryIO, archive: zipfile.ZipFile, member: str, mapped: np.ndarray | None
) -> np.ndarray:
    """A stored archive member's bytes: a view of the mapped file, or read and CRC-checked."""
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:  # torch never compresses; others might
        return np.frombuffer(archive.read(member), np.uint8)
    # The local header (30 bytes, then name and extra field) precedes the stored bytes.
    file.seek(info.header_offset)
    header = file.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise PthError(f"archive member {member} has a damaged local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if mapped is not None:
        if start + info.file_size > mapped.size:
            raise PthError(f"archive member {member} ends past the end of the file")
        return mapped[start : start + info.file_size]
    raw = np.empty(info.file_size, np.uint8)
    file.seek(start)
    if file.readinto(memoryview(raw)) != raw.size:
        raise PthError(f"archive member {member} ends early: the file is truncated")
    if zlib.crc32(raw) != info.CRC:
        raise PthError(f"archive member {member} fails its CRC check: the file is corrupt")
    return raw


def _load_legacy(file: BinaryIO, path: str, mmap: bool) -> tuple[Any, dict[str, np.ndarray]]:
    head = file.read(512)
    if len(head) == 512 and head[257:262] == b"ustar":
        raise PthError(
            f"{path} is a tar-based checkpoint from PyTorch before 0.4, which is not supported; "
            "re-save it with a newer torch"
        )
    file.seek(0)
    if _RestrictedUnpickler(file).load() != _LEGACY_MAGIC:
        raise PthError(f"{path} is not a PyTorch checkpoint (no zip archive, no magic number)")
    protocol = _RestrictedUnpickler(file).load()
    if protocol != _LEGACY_PROTOCOL:
        raise PthError(f"{path}: unsupported legacy protocol version {protocol!r}")
    sys_info = _RestrictedUnpickler(file).load()
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    byteorder = "little" if little else "big"
    roots: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        _, storage_type, key, _location, numel, view = _storage_pid(pid, 6)
        root = roots.setdefault(key, _Storage(key, _native(storage_type.dtype, byteorder), numel))
        if view is None:
            return root
        _view_key, offset, view_numel = view  # a pre-0.4 view of part of a storage
        if not (isinstance(offset, int) and isinstance(view_numel, int) and offset >= 0):
            raise PthError(f"{path}: malformed storage view {view!r}")
        return _Storage(key, root.dtype, view_numel, offset * root.dtype.itemsize)

    obj = _RestrictedUnpickler(file, persistent_load).load()
    keys = _RestrictedUnpickler(file).load()
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
        raise PthError(f"{path}: the storage key list does not match the tensors")
    size = os.fstat(file.fileno()).st_size
    mapped = _map(file) if mmap else None
    buffers: dict[str, np.ndarray] = {}
    for key in map(str, keys):
        header = file.read(8)
        if len(header) < 8:
            raise PthError(f"{path} is truncated: storage {key!r} is missing")
        (numel,) = struct.unpack("<q" if little else ">q", header)
        root = roots[key]
        if numel != root.numel:
            raise PthError(f"{path}: storage {key!r} has {numel} elements, expected {root.numel}")
        nbytes, start = numel * root.dtype.itemsize, file.tell()
        if start + nbytes > size:
            raise PthError(f"{path} is truncated inside storage {key!r}")
        if mapped is not None:
            buffers[key] = mapped[start : start + nbytes]
            file.seek(nbytes, os.SEEK_CUR)
        else:
            buffers[key] = np.empty(nbytes, np.uint8)
            if file.readinto(memoryview(buffers[key])) != nbytes:
                raise PthError(f"{path} is truncated inside storage {key!r}")
    return obj, buffers


def _storage_pid(pid: Any, length: int) -> tuple[Any, ...]:
    """Check a persistent id ('storage', type, key, location, numel[, view])."""
    if not (isinstance(pid, tuple) and len(pid) == length and pid[0] == "storage"):
        raise PthError(f"unexpected persistent id {pid!r}; expected a torch storage")
    if not isinstance(pid[1], _StorageType):
        raise PthError(f"persistent id names {pid[1]!r}, not a torch storage type")
    if not (isinstance(pid[4], int) and pid[4] >= 0):
        raise PthError(f"persistent id has an invalid element count {pid[4]!r}")
    return (pid[0], pid[1], str(pid[2]), *pid[3:])


def _native(dtype: np.dtype, byteorder: str) -> np.dtype:
    if byteorder not in ("little", "big"):
        raise PthError(f"unknown byte order {byteorder!r} in the checkpoint")
    return dtype.newbyteorder("<" if byteorder == "little" else ">")


def _materialize(obj: Any, buffers: dict[str, np.ndarray], path: str, name: str = "") -> Any:
    """Replace every tensor record in a loaded object by its numpy array."""
    if isinstance(obj, _Tensor):
        return _array(obj, buffers[obj.storage.key], f"{path}: tensor {name.rstrip('.')}")
    if isinstance(obj, dict):
        return type(obj)(
            (key, _materialize(value, buffers, path, f"{name}{key}.")) for key, value in obj.items()
        )
    if isinstance(obj, list | tuple):
        return type(obj)(
            _materialize(value, buffers, path, f"{name}{i}.") for i, value in enumerate(obj)
        )
    return obj


def _array(tensor: _Tensor, raw: np.ndarray, where: str) -> np.ndarray:
    storage, size, stride, offset = tensor.storage, tensor.size, tensor.stride, tensor.offset
    item = storage.dtype.itemsize
    raw = raw[storage.byte_offset : storage.byte_offset + storage.numel * item]
    data = raw[: raw.size - raw.size % item].view(storage.dtype)
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or offset < 0:
        raise PthError(f"{where} has a negative size, stride or offset")
    if 0 in size:
        return np.zeros(size, storage.dtype.newbyteorder("="))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.size:
        raise PthError(f"{where} reaches past the end of its storage")
    numel = int(np.prod(size, dtype=np.int64))
    if _is_contiguous(size, stride):
        array = data[offset : offset + numel].reshape(size)  # a view: no copy
    else:
        if numel * data.itemsize > _MAX_EXPANDED_BYTES:  # stride-0 views can ask for any size
            raise PthError(f"{where} expands to {numel * data.itemsize} bytes; refusing")
        strides = tuple(s * data.itemsize for s in stride)
        array = np.lib.stride_tricks.as_strided(data[offset:], size, strides, writeable=False)
        array = np.array(array)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _is_contiguous(size: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(size), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise PthError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    bad = [str(key) for key, value in obj.items() if not isinstance(value, np.ndarray)]
    if bad:
        raise PthError(f"{path}: entries {bad[:10]} are not tensors; expected a state dict")
    return {str(key): value for key, value in obj.items()}

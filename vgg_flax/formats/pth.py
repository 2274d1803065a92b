"""Read PyTorch checkpoints into numpy arrays, without torch and without running code from the file.

Both of torch's formats are read: the zip format (torch >= 1.6: `data.pkl` plus one archive member
per storage) and the legacy format (`_use_new_zipfile_serialization=False`, torchvision's 2017
files: magic number, protocol, system info, the object pickle, the storage keys, then the raw
storages). The pickles go through a restricted unpickler that knows only the few globals a state
dict needs; anything else (a whole `nn.Module`, `os.system`, ...) is refused before it can run.

A hostile file cannot make the reader use unbounded time or memory, nor change it for later
loads: only regular files are opened; each pickle is first walked opcode by opcode (without
building anything) to bound its size, the objects it builds and their shared references; zip
members must be stored or only mildly compressed; the total size of all tensors is checked before
any is copied; every zip member's CRC is verified, also when the file is memory-mapped; and the
allowed globals are immutable stand-ins made afresh for each load.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickle
import pickletools
import reprlib
import stat
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

# The reader's budget. A state dict's pickle is a few KB per hundred tensors, so these limits sit
# far above any real checkpoint and far below what would hurt the machine.
MAX_PICKLE_BYTES = 16 << 20  # one pickle (data.pkl, or one of the legacy file's pickles)
MAX_OBJECT_NODES = 1 << 20  # one object counted as a tree: shared references count every time
MAX_MEMO_INDEX = 1 << 20  # the unpickler allocates its memo up to the largest index
# Tensors may together hold this much beyond twice their storages' bytes (views, stride 0).
EXTRA_TENSOR_BYTES = 64 << 20
# A compressed member (torch never compresses) may expand this much, plus a small allowance.
MAX_COMPRESSION_RATIO = 16
COMPRESSED_SLACK_BYTES = 1 << 20

_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 3, 60, 60


class PthError(ValueError):
    """A file that is not a readable PyTorch checkpoint (corrupt, truncated or unsupported)."""


class UnsafePickleError(PthError, pickle.UnpicklingError):
    """A checkpoint whose pickle asks for a global outside the allowed few; nothing was run."""


def _refuse_state(self: Any, state: Any) -> None:
    raise PthError(f"the pickle tries to change a {type(self).__name__}; refusing it")


def _refuses_build(cls: type) -> type:
    # dataclasses gives frozen slotted classes a __setstate__ that bypasses `frozen`, which a
    # pickle's BUILD would call. Set after the class is built: some Python 3.11 releases (3.11.2,
    # Debian's) replace a __setstate__ defined in the class body with dataclasses' own.
    cls.__setstate__ = _refuse_state
    return cls


@_refuses_build
@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    name: str
    dtype: np.dtype


@_refuses_build
@dataclasses.dataclass(frozen=True, slots=True)
class _Storage:
    """A storage (or, in old files, a view of one) by key; its bytes are looked up at the end."""

    key: str
    dtype: np.dtype
    numel: int
    byte_offset: int = 0


@_refuses_build
@dataclasses.dataclass(frozen=True, slots=True)
class _Tensor:
    """A tensor's place in a storage; read into an array once every storage is loaded."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.size)


@_refuses_build
@dataclasses.dataclass(frozen=True, slots=True)
class _Function:
    """An allowed callable global: frozen and slotted, so a pickle's BUILD cannot change it."""

    name: str
    function: Callable[..., Any]

    def __call__(self, *args: Any) -> Any:
        return self.function(*args)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> _Tensor:
    # Covers _rebuild_tensor and _rebuild_tensor_v2: requires_grad, hooks and metadata are dropped.
    if not isinstance(storage, _Storage):
        raise PthError(f"a tensor refers to {type(storage).__name__}, not to a storage")
    if not (isinstance(size, tuple | list) and isinstance(stride, tuple | list)):
        raise PthError("a tensor's size or stride is not a tuple")
    ints = (storage_offset, *size, *stride)
    if not all(isinstance(value, int) and not isinstance(value, bool) for value in ints):
        raise PthError(f"a tensor has a non-integer offset, size or stride: {_short.repr(ints)}")
    if len(size) != len(stride):
        raise PthError(f"a tensor's size {tuple(size)} and stride {tuple(stride)} differ in rank")
    if any(n < 0 for n in size) or any(s < 0 for s in stride) or storage_offset < 0:
        raise PthError("a tensor has a negative size, stride or offset")
    return _Tensor(storage, storage_offset, tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_: Any) -> _Tensor:
    # nn.Parameter(data): only the data matters here. Anything but a tensor would let a pickle
    # alias (and then modify) an object it already placed elsewhere.
    if not isinstance(data, _Tensor):
        raise PthError(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


def _allowed() -> dict[tuple[str, str], Any]:
    """The only globals a pickle may name, each a harmless immutable stand-in, made per load."""
    functions = {
        "_rebuild_tensor": _rebuild_tensor,
        "_rebuild_tensor_v2": _rebuild_tensor,
        "_rebuild_parameter": _rebuild_parameter,
        "_rebuild_parameter_with_state": _rebuild_parameter,
    }
    return {
        ("collections", "OrderedDict"): collections.OrderedDict,  # a builtin, immutable type
        **{("torch._utils", name): _Function(name, fn) for name, fn in functions.items()},
        **{("torch", name): _StorageType(name, dtype) for name, dtype in STORAGE_DTYPES.items()},
    }


def _refused(module: Any, name: Any) -> UnsafePickleError:
    return UnsafePickleError(
        f"refused global {_short.repr(module)[1:-1]}.{_short.repr(name)[1:-1]}: a "
        "checkpoint may only hold tensors, numbers, strings and (ordered) dicts, and "
        "nothing from the file was run. If it holds a whole model, save "
        "`model.state_dict()` instead"
    )


_ALLOWED_NAMES = frozenset(_allowed())


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, persistent_load: Callable[[Any], Any] | None = None):
        super().__init__(file, encoding="utf-8")  # as torch.load: Python 2 pickles' str
        self._persistent = persistent_load
        self._allowed = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _refused(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise PthError(f"unexpected persistent id {_short.repr(pid)} outside the tensor pickle")
        return self._persistent(pid)


def load_pth(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict (zip or legacy format) into `{name: numpy array}` safely.

    No code from the file runs and torch is not needed. Tensors come back in their stored dtype
    (float32, float16, bfloat16 via ml_dtypes, int64, ...); a `{"state_dict": ...}` or
    `{"model": ...}` wrapper is unwrapped. `mmap=True` maps the file instead of reading it: the
    arrays are then read-only views of the file, which must stay unchanged while they live (the
    zip format's CRCs are checked either way). Raises `PthError` (a ValueError) naming the file
    for a corrupt, truncated, unsupported or over-budget file, and `UnsafePickleError` for a
    pickle that names a global outside the allowed few.
    """
    path = os.fspath(path)
    try:
        with _open_regular(path) as file:
            if zipfile.is_zipfile(file):
                obj, buffers = _load_zip(file, path, mmap)
            else:
                file.seek(0)
                obj, buffers = _load_legacy(file, path, mmap)
            return _state_dict(_materialize(obj, buffers, path), path)
    except PthError as error:
        if str(error).startswith(path):
            raise
        raise type(error)(f"{path}: {error}") from error
    except OSError:
        raise
    except Exception as error:  # a damaged pickle can fail in many ways
        raise PthError(
            f"{path} is corrupt, truncated or not a PyTorch checkpoint "
            f"({type(error).__name__}: {_short.repr(str(error))[1:-1]})"
        ) from error


def _open_regular(path: str) -> BinaryIO:
    """Open `path` for reading only if it is a regular file (not a device, FIFO or folder)."""
    # O_NONBLOCK: opening a FIFO would otherwise wait for a writer before fstat could refuse it.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
            raise PthError(f"{path} is {kind}; give the path of a .pth file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# --- the pickle pre-scan ---------------------------------------------------------------------
# Each pickle is walked with pickletools before the C unpickler builds it. The walk keeps, for
# every object the pickle would build, its size counted as a tree (so n references to one object
# count n times). Containers may only grow before they are placed in another one (as every real
# pickle does), so these counts stay exact upper bounds; dict keys and set items must be strings
# or small ints, whose hashes cannot be made to collide or cost more than one step.

_MARK = object()
_ATOMS = frozenset(
    "INT BININT BININT1 BININT2 LONG LONG1 LONG4 STRING BINSTRING SHORT_BINSTRING BINBYTES "
    "SHORT_BINBYTES BINBYTES8 BYTEARRAY8 UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 NONE "
    "NEWTRUE NEWFALSE FLOAT BINFLOAT".split()
)
_EMPTY = {"EMPTY_LIST": "list", "EMPTY_DICT": "dict", "EMPTY_SET": "set", "EMPTY_TUPLE": "tuple"}
_FROM_MARK = {"LIST": "list", "TUPLE": "tuple", "DICT": "dict", "FROZENSET": "set"}


class _Truncated(PthError):
    """The pickle's bytes ran out before its STOP opcode."""


class _Node:
    __slots__ = ("embedded", "kind", "value", "weight")

    def __init__(self, weight: int, kind: str, value: Any = None):
        self.weight, self.kind, self.embedded, self.value = weight, kind, False, value


class _Scan:
    """The pre-scan's stack, memo and checks."""

    def __init__(self) -> None:
        self.stack: list[Any] = []
        self.memo: dict[int, _Node] = {}

    def pop_mark(self) -> list[_Node]:
        for index in range(len(self.stack) - 1, -1, -1):
            if self.stack[index] is _MARK:
                items = self.stack[index + 1 :]
                del self.stack[index:]
                return items
        raise PthError("the pickle pops a mark it never set")

    def pop(self, count: int = 1) -> list[_Node]:
        items = self.stack[-count:] if count else []
        if len(items) != count or any(item is _MARK for item in items):
            raise PthError("the pickle's stack underflows")
        del self.stack[len(self.stack) - count :]
        return items

    def top(self) -> _Node:
        if not self.stack or self.stack[-1] is _MARK:
            raise PthError("the pickle's stack underflows")
        return self.stack[-1]

    def new(self, kind: str, items: list[_Node], extra: int = 1) -> _Node:
        node = _Node(extra + sum(item.weight for item in items), kind)
        self._place(items)
        self._check(node)
        return node

    def grow(self, target: _Node, items: list[_Node], keys: list[_Node] = ()) -> None:
        if target.embedded:
            raise PthError("the pickle changes an object after placing it in another")
        if any(item is target for item in items):
            raise PthError("the pickle places an object inside itself")
        self._keys(keys)
        target.weight += sum(item.weight for item in items)
        self._place(items)
        self._check(target)

    def _place(self, items: list[_Node]) -> None:
        for item in items:
            item.embedded = True

    @staticmethod
    def _keys(keys: list[_Node]) -> None:
        if any(key.kind != "key" for key in keys):
            raise PthError("a dict key or set item is not a string or a small integer")

    @staticmethod
    def _check(node: _Node) -> None:
        if node.weight > MAX_OBJECT_NODES:
            raise PthError(
                f"the pickle builds an object of more than {MAX_OBJECT_NODES} parts (counting "
                "shared references); refusing it as a decompression bomb"
            )


def _atom_kind(arg: Any) -> str:
    if arg is None or isinstance(arg, bool | str) or (isinstance(arg, int) and abs(arg) < 2**31):
        return "key"
    return "atom"


def _scan_pickle(data: bytes) -> int:
    """Walk one pickle without building it; return its length, or raise if it is over budget."""
    try:
        return _walk(pickletools.genops(io.BytesIO(data)))
    except PthError:
        raise
    except ValueError as error:  # pickletools: a bad opcode, or data ending early
        if "exhausted" in str(error) or "remain" in str(error):
            raise _Truncated(str(error)) from error
        raise PthError(f"a pickle is corrupt ({error})") from error


def _walk(ops: Any) -> int:
    scan = _Scan()
    for opcode, arg, _pos in ops:
        name = opcode.name
        if name in _ATOMS:
            size = len(arg) // 4096 if isinstance(arg, str | bytes | bytearray) else 0
            value = arg if isinstance(arg, str) and len(arg) < 256 else None  # for STACK_GLOBAL
            scan.stack.append(_Node(1 + size, _atom_kind(arg), value))
        elif name in _EMPTY:
            scan.stack.append(_Node(1, _EMPTY[name]))
        elif name == "MARK":
            scan.stack.append(_MARK)
        elif name in _FROM_MARK:
            items = scan.pop_mark()
            if name == "DICT":
                scan._keys(items[0::2])
            elif name == "FROZENSET":
                scan._keys(items)
            scan.stack.append(scan.new(_FROM_MARK[name], items))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            scan.stack.append(scan.new("tuple", scan.pop(int(name[-1]))))
        elif name == "APPEND":
            (item,) = scan.pop()
            scan.grow(scan.top(), [item])
        elif name == "APPENDS":
            items = scan.pop_mark()
            scan.grow(scan.top(), items)
        elif name == "SETITEM":
            key, value = scan.pop(2)
            scan.grow(scan.top(), [key, value], [key])
        elif name == "SETITEMS":
            items = scan.pop_mark()
            scan.grow(scan.top(), items, items[0::2])
        elif name == "ADDITEMS":
            items = scan.pop_mark()
            scan.grow(scan.top(), items, items)
        elif name == "BUILD":
            (state,) = scan.pop()
            target = scan.top()
            if target.kind != "reduced":  # never on an allowed global or a plain container
                raise PthError("the pickle sets the state of an object it may not change")
            scan.grow(target, [state])
        elif name == "REDUCE":
            function, args = scan.pop(2)
            if function.kind != "global":
                raise PthError("the pickle calls something that is not an allowed global")
            scan.stack.append(scan.new("reduced", [args]))
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            # Checked here too, so that a refused global is named before any other fault.
            names = arg.split(" ", 1) if name == "GLOBAL" else [n.value for n in scan.pop(2)]
            if tuple(names) not in _ALLOWED_NAMES:
                raise _refused(*names)
            scan.stack.append(_Node(1, "global"))
        elif name == "BINPERSID":
            (pid,) = scan.pop()
            pid.embedded = True
            scan.stack.append(_Node(1, "storage"))
        elif name == "PERSID":
            scan.stack.append(_Node(1, "storage"))
        elif name == "POP":
            if not scan.stack:
                raise PthError("the pickle's stack underflows")
            scan.stack.pop()
        elif name == "POP_MARK":
            scan.pop_mark()
        elif name == "DUP":
            scan.stack.append(scan.top())
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            index = len(scan.memo) if name == "MEMOIZE" else int(arg)
            if not 0 <= index <= MAX_MEMO_INDEX:
                raise PthError(f"the pickle uses memo slot {index}, beyond {MAX_MEMO_INDEX}")
            scan.memo[index] = scan.top()
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            if int(arg) not in scan.memo:
                raise PthError(f"the pickle reads memo slot {arg}, which it never set")
            scan.stack.append(scan.memo[int(arg)])
        elif name == "STOP":
            scan.pop()
            return _pos + 1
        elif name not in ("PROTO", "FRAME"):
            # NEWOBJ, OBJ, INST, EXT*, out-of-band buffers: no state dict needs them.
            raise PthError(f"the pickle uses the {name} opcode, which a state dict never needs")
    raise _Truncated("the pickle ends without STOP")


def _read_pickle(file: BinaryIO, limit: int = MAX_PICKLE_BYTES) -> bytes:
    """Read one pickle from `file`'s position: at most `limit` bytes, checked by `_scan_pickle`.

    The file is left just past the pickle. Reads grow geometrically, so a small pickle costs a
    small read whatever the file's size.
    """
    start, size = file.tell(), 1 << 16
    while True:
        file.seek(start)
        chunk = file.read(min(size, limit))
        try:
            end = _scan_pickle(chunk)
        except _Truncated as error:
            if len(chunk) < min(size, limit):
                raise PthError(f"a pickle is truncated ({error})") from error
            if size >= limit:
                raise PthError(
                    f"a pickle is larger than {limit} bytes; no state dict needs that much"
                ) from error
            size *= 4
            continue
        file.seek(start + end)
        return chunk[:end]


def _unpickle(data: bytes, persistent_load: Callable[[Any], Any] | None = None) -> Any:
    return _RestrictedUnpickler(io.BytesIO(data), persistent_load).load()


# --- the two file formats ----------------------------------------------------------------------


def _check_member(info: zipfile.ZipInfo, path: str) -> None:
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise PthError(
            f"{path}: archive member {info.filename} uses compression method "
            f"{info.compress_type}; torch.save stores members uncompressed, so re-save the file"
        )


def _load_zip(file: BinaryIO, path: str, mmap: bool) -> tuple[Any, dict[str, np.ndarray]]:
    size = os.fstat(file.fileno()).st_size
    with zipfile.ZipFile(file) as archive:
        infos = {info.filename: info for info in archive.infolist()}
        names = set(infos)
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
            byteorder = _read_member(archive, infos[f"{prefix}byteorder"], path, 16)
            byteorder = byteorder.decode(errors="replace").strip()
        storages: dict[str, _Storage] = {}

        def persistent_load(pid: Any) -> _Storage:
            _, storage_type, key, _location, numel = _storage_pid(pid, 5)
            member = f"{prefix}data/{key}"
            if member not in names:
                raise PthError(f"storage {_short.repr(key)} is missing from the archive")
            stored = infos[member].file_size
            if stored != numel * storage_type.dtype.itemsize:
                raise PthError(
                    f"storage {_short.repr(key)} holds {stored} bytes, its pickle says "
                    f"{numel} x {storage_type.dtype}"
                )
            storages[key] = _Storage(key, _native(storage_type.dtype, byteorder), numel)
            return storages[key]

        data = _read_member(archive, infos[pickles[0]], path, MAX_PICKLE_BYTES)
        if _scan_pickle(data) != len(data):
            raise PthError("data.pkl holds bytes after its pickle")
        obj = _unpickle(data, persistent_load)
        members = [infos[f"{prefix}data/{key}"] for key in storages]
        for info in members:
            _check_member(info, path)
        _check_sizes(members, size, path)
        mapped = _map(file) if mmap else None
        buffers = {
            key: _member_bytes(file, archive, info, mapped)
            for key, info in zip(storages, members, strict=True)
        }
    return obj, buffers


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: str, limit: int) -> bytes:
    """A small member's bytes (CRC-checked by zipfile), refused beyond `limit` or a bomb."""
    _check_member(info, path)
    if info.file_size > limit or info.file_size > max(
        MAX_COMPRESSION_RATIO * info.compress_size, COMPRESSED_SLACK_BYTES
    ):
        raise PthError(
            f"archive member {info.filename} would expand to {info.file_size} bytes; refusing"
        )
    with archive.open(info) as member:
        return member.read(limit + 1)[:limit]


def _check_sizes(members: list[zipfile.ZipInfo], size: int, path: str) -> None:
    """Storages may not overlap (read twice) nor expand like a zip bomb."""
    stored = sum(i.file_size for i in members if i.compress_type == zipfile.ZIP_STORED)
    packed = [i for i in members if i.compress_type != zipfile.ZIP_STORED]
    expanded, compressed = sum(i.file_size for i in packed), sum(i.compress_size for i in packed)
    if stored > size:
        raise PthError(f"its storages claim {stored} bytes, more than the file's {size}")
    if expanded > MAX_COMPRESSION_RATIO * compressed + COMPRESSED_SLACK_BYTES:
        raise PthError(
            f"its compressed storages expand from {compressed} to {expanded} bytes, beyond "
            f"{MAX_COMPRESSION_RATIO}x; refusing it as a zip bomb (torch.save never compresses)"
        )


def _map(file: BinaryIO) -> np.ndarray | None:
    position = file.tell()  # np.memmap moves the file position
    mapped = np.memmap(file, np.uint8, mode="r") if os.fstat(file.fileno()).st_size else None
    file.seek(position)
    return mapped


def _member_bytes(
    file: BinaryIO, archive: zipfile.ZipFile, info: zipfile.ZipInfo, mapped: np.ndarray | None
) -> np.ndarray:
    """An archive member's bytes, CRC-checked: a view of the mapped file, or read."""
    member = info.filename
    if info.compress_type != zipfile.ZIP_STORED:  # zipfile checks the CRC
        return np.frombuffer(archive.read(info), np.uint8)
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
        raw = mapped[start : start + info.file_size]
    else:
        raw = np.empty(info.file_size, np.uint8)
        file.seek(start)
        if file.readinto(memoryview(raw)) != raw.size:
            raise PthError(f"archive member {member} ends early: the file is truncated")
    # One pass over the bytes: a flipped bit is refused whether the file is read or mapped.
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
    try:
        magic = _unpickle(_read_pickle(file, 1 << 10))
    except UnsafePickleError:
        raise
    except PthError as error:
        raise PthError(
            f"{path} is not a PyTorch checkpoint (no zip archive, no magic number)"
        ) from error
    if magic != _LEGACY_MAGIC:
        raise PthError(f"{path} is not a PyTorch checkpoint (no zip archive, no magic number)")
    protocol = _unpickle(_read_pickle(file, 1 << 10))
    if protocol != _LEGACY_PROTOCOL:
        raise PthError(f"unsupported legacy protocol version {_short.repr(protocol)}")
    sys_info = _unpickle(_read_pickle(file, 1 << 16))
    little = not isinstance(sys_info, dict) or sys_info.get("little_endian", True)
    byteorder = "little" if little else "big"
    roots: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        _, storage_type, key, _location, numel, view = _storage_pid(pid, 6)
        root = roots.setdefault(key, _Storage(key, _native(storage_type.dtype, byteorder), numel))
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise PthError(f"malformed storage view {_short.repr(view)}")
        _view_key, offset, view_numel = view  # a pre-0.4 view of part of a storage
        if not (isinstance(offset, int) and isinstance(view_numel, int) and offset >= 0):
            raise PthError(f"malformed storage view {_short.repr(view)}")
        if view_numel < 0 or offset + view_numel > root.numel:
            raise PthError(f"storage view {_short.repr(view)} reaches past its storage")
        return _Storage(key, root.dtype, view_numel, offset * root.dtype.itemsize)

    obj = _unpickle(_read_pickle(file), persistent_load)
    keys = _unpickle(_read_pickle(file))
    if not isinstance(keys, list) or sorted(map(str, keys)) != sorted(roots):
        raise PthError("the storage key list does not match the tensors")
    size = os.fstat(file.fileno()).st_size
    mapped = _map(file) if mmap else None
    buffers: dict[str, np.ndarray] = {}
    for key in map(str, keys):
        header = file.read(8)
        if len(header) < 8:
            raise PthError(f"{path} is truncated: storage {_short.repr(key)} is missing")
        (numel,) = struct.unpack("<q" if little else ">q", header)
        root = roots[key]
        if numel != root.numel:
            raise PthError(f"storage {key!r} has {numel} elements, expected {root.numel}")
        nbytes, start = numel * root.dtype.itemsize, file.tell()
        if start + nbytes > size:  # checked before allocating: the file bounds every read
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
        raise PthError(f"unexpected persistent id {_short.repr(pid)}; expected a torch storage")
    if not isinstance(pid[1], _StorageType):
        raise PthError(f"persistent id names {_short.repr(pid[1])}, not a torch storage type")
    if not (isinstance(pid[4], int) and pid[4] >= 0):
        raise PthError(f"persistent id has an invalid element count {_short.repr(pid[4])}")
    if not isinstance(pid[2], str | int):
        raise PthError(f"persistent id has an invalid key {_short.repr(pid[2])}")
    return (pid[0], pid[1], str(pid[2]), *pid[3:])


def _native(dtype: np.dtype, byteorder: str) -> np.dtype:
    if byteorder not in ("little", "big"):
        raise PthError(f"unknown byte order {_short.repr(byteorder)} in the checkpoint")
    return dtype.newbyteorder("<" if byteorder == "little" else ">")


# --- tensors ---------------------------------------------------------------------------------


def _tensors(obj: Any) -> list[_Tensor]:
    """Every tensor reference in the loaded object (each container visited once)."""
    found, seen, todo = [], set(), [obj]
    while todo:
        item = todo.pop()
        if isinstance(item, _Tensor):
            found.append(item)
        elif isinstance(item, dict | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            todo.extend(item.values() if isinstance(item, dict) else item)
    return found


def _check_budget(tensors: list[_Tensor], buffers: dict[str, np.ndarray]) -> None:
    """Refuse tensors whose total size (stride-0 ones counted in full) is beyond the budget."""
    stored = sum(buffer.size for buffer in buffers.values())
    total = sum(t.numel * t.storage.dtype.itemsize for t in tensors)
    limit = 2 * stored + EXTRA_TENSOR_BYTES
    if total > limit:
        raise PthError(
            f"its tensors need {total} bytes: it expands to more than {limit} bytes from {stored} "
            "stored bytes; refusing it (stride-0 or repeated views would ask for that much)"
        )


def _materialize(obj: Any, buffers: dict[str, np.ndarray], path: str) -> Any:
    """Replace every tensor record in a loaded object by its numpy array, within the budget."""
    _check_budget(_tensors(obj), buffers)
    done: dict[int, Any] = {}

    def convert(item: Any, name: str) -> Any:
        if isinstance(item, _Tensor):
            return _array(item, buffers[item.storage.key], f"tensor {name.rstrip('.')}")
        if not isinstance(item, dict | list | tuple):
            return item
        if id(item) not in done:  # a shared container is converted once
            if isinstance(item, dict):
                pairs = ((key, convert(value, f"{name}{key}.")) for key, value in item.items())
                done[id(item)] = type(item)(pairs)
            else:
                done[id(item)] = type(item)(convert(v, f"{name}{i}.") for i, v in enumerate(item))
        return done[id(item)]

    return convert(obj, "")


def _array(tensor: _Tensor, raw: np.ndarray, where: str) -> np.ndarray:
    storage, size, stride, offset = tensor.storage, tensor.size, tensor.stride, tensor.offset
    item = storage.dtype.itemsize
    raw = raw[storage.byte_offset : storage.byte_offset + storage.numel * item]
    data = raw[: raw.size - raw.size % item].view(storage.dtype)
    if 0 in size:
        return np.zeros(size, storage.dtype.newbyteorder("="))
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= data.size:
        raise PthError(f"{where} reaches past the end of its storage")
    numel = tensor.numel
    if _is_contiguous(size, stride):
        array = data[offset : offset + numel].reshape(size)  # a view: no copy
    else:
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

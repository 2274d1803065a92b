"""Hostile .pth files, built byte by byte: each is refused quickly, in little memory, by name.

The loads run in a child process that imports only the reader, so its peak memory (ru_maxrss)
and the time of each load are its own; a valid checkpoint must still load after all of them.
"""

import io
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
import torchvision

from vgg_flax.formats import pth
from vgg_flax.formats.pth import PthError, UnsafePickleError, load_pth
from vgg_flax.formats.torchvision import from_torchvision

GIB = 1 << 30


# --- a tiny pickle assembler -----------------------------------------------------------------


def _str(text: str) -> bytes:
    data = text.encode()
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def _int(n: int) -> bytes:
    return pickle.BININT + struct.pack("<i", n)


def _long(n: int) -> bytes:
    data = n.to_bytes(n.bit_length() // 8 + 1, "little", signed=True)
    return pickle.LONG1 + bytes([len(data)]) + data


def _global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def _tuple(*parts: bytes) -> bytes:
    return pickle.MARK + b"".join(parts) + pickle.TUPLE


def _put(index: int) -> bytes:
    return pickle.LONG_BINPUT + struct.pack("<I", index)


def _get(index: int) -> bytes:
    return pickle.LONG_BINGET + struct.pack("<I", index)


def _tensor(key: str, numel: int, size: tuple, stride: tuple) -> bytes:
    """torch's `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`."""
    pid = _tuple(_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"))
    pid = pid[:-1] + _int(numel) + pickle.TUPLE + pickle.BINPERSID
    hooks = _global("collections", "OrderedDict") + pickle.EMPTY_TUPLE + pickle.REDUCE
    args = _tuple(pid, _int(0), _tuple(*map(_int, size)), _tuple(*map(_int, stride)))
    args = args[:-1] + pickle.NEWFALSE + hooks + pickle.TUPLE
    return _global("torch._utils", "_rebuild_tensor_v2") + args + pickle.REDUCE


def _dict(items: dict[str, bytes]) -> bytes:
    body = b"".join(_str(key) + value for key, value in items.items())
    return pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + body + pickle.SETITEMS


def _stop(body: bytes) -> bytes:
    return body + pickle.STOP


def _zip(path, data_pkl: bytes, storages: dict, method=zipfile.ZIP_STORED, pkl_method=None):
    """A torch.save-style archive: archive/data.pkl, archive/byteorder, archive/data/<key>."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data_pkl, compress_type=pkl_method or method)
        archive.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            archive.writestr(f"archive/data/{key}", data, compress_type=method)
    return path


def _legacy(path, obj_pickle: bytes, keys: bytes):
    head = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (pth._LEGACY_MAGIC, pth._LEGACY_PROTOCOL, {"little_endian": True})
    )
    path.write_bytes(head + obj_pickle + keys)
    return path


def _nested(depth: int, build: bytes) -> bytes:
    """Level i+1 holds level i twice: 2**depth parts from a few bytes per level."""
    body = pickle.EMPTY_LIST + _put(0) + pickle.POP
    for level in range(depth):
        body += pickle.MARK + _get(level) + _get(level) + build + _put(level + 1) + pickle.POP
    return body + _get(depth)


# --- the hostile files -------------------------------------------------------------------------


def _hostile(folder) -> dict[str, tuple[str, str]]:
    """name -> (path, regex the refusal must match)."""
    files: dict[str, tuple[str, str]] = {}

    def add(name, path, pattern):
        files[name] = (str(path), pattern)

    nested = _nested(40, pickle.LIST)
    add("shared_lists", _zip(folder / "lists.pth", _stop(_dict({"w": nested})), {}), "parts")
    tuples = _nested(40, pickle.TUPLE)  # hashing it as a key would take 2**40 steps
    keyed = pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + tuples + _int(1) + pickle.SETITEM
    add("shared_tuple_key", _zip(folder / "tuplekey.pth", _stop(keyed), {}), "parts|dict key")
    legacy_keys = pickle.dumps([], protocol=2)
    add(
        "shared_legacy",
        _legacy(folder / "legacy.pth", _stop(_dict({"w": nested})), legacy_keys),
        "parts",
    )
    colliding = pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK
    colliding += b"".join(_long(k * (2**61 - 1) + 5) + _int(0) for k in range(1, 50))
    colliding += pickle.SETITEMS  # every key hashes to 5: n keys, n**2 comparisons
    add("colliding_keys", _zip(folder / "keys.pth", _stop(colliding), {}), "dict key")
    memo = pickle.PROTO + b"\x02" + pickle.NONE + _put(0xFFFFFFF0)
    add("memo_index", _zip(folder / "memo.pth", _stop(memo), {}), "memo slot")

    one = np.zeros(1, np.float32).tobytes()
    zeros = {f"w{i}": _tensor("0", 1, (2**15, 2**13), (0, 0)) for i in range(8)}  # 8 x 1 GiB
    add("stride_zero", _zip(folder / "stride0.pth", _stop(_dict(zeros)), {"0": one}), "expands")

    big = bytes(256 << 20)  # 256 MiB of zeros, deflated to ~256 KB
    tensor = _stop(_dict({"w": _tensor("0", len(big) // 4, (len(big) // 4,), (1,))}))
    add(
        "deflate_storage",
        _zip(folder / "deflate.pth", tensor, {"0": big}, zipfile.ZIP_DEFLATED),
        "zip bomb",
    )
    small = bytes(16 << 20)
    tensor = _stop(_dict({"w": _tensor("0", len(small) // 4, (len(small) // 4,), (1,))}))
    add(
        "bzip2_storage",
        _zip(folder / "bzip2.pth", tensor, {"0": small}, zipfile.ZIP_BZIP2),
        "compression method",
    )
    padded = pickle.PROTO + b"\x04" + pickle.BINBYTES8 + struct.pack("<Q", len(big)) + big
    add(
        "deflate_pickle",
        _zip(folder / "pkl.pth", _stop(padded), {}, zipfile.ZIP_DEFLATED),
        "expand to",
    )

    state = pickle.PROTO + b"\x02" + _global("torch", "FloatStorage")
    state += pickle.EMPTY_DICT + _str("dtype") + _str("x") + pickle.SETITEM + pickle.BUILD
    add("build_on_global", _zip(folder / "build.pth", _stop(state), {}), "may not change")
    defaults = pickle.PROTO + b"\x02" + _global("torch._utils", "_rebuild_tensor_v2")
    defaults += (
        _tuple(
            pickle.NONE, pickle.EMPTY_DICT + _str("__defaults__") + _tuple(_int(1)) + pickle.SETITEM
        )
        + pickle.BUILD
    )
    add("build_on_function", _zip(folder / "defaults.pth", _stop(defaults), {}), "may not change")
    cycle = pickle.PROTO + b"\x02" + pickle.EMPTY_LIST + _put(0) + _get(0) + pickle.APPEND
    add("cycle", _zip(folder / "cycle.pth", _stop(cycle), {}), "itself")
    deep = pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + _str("w") + pickle.MARK * 50000
    deep += pickle.LIST * 50000 + pickle.SETITEM  # lists nested 50000 deep
    add("deep", _zip(folder / "deep.pth", _stop(deep), {}), "corrupt|not tensors")

    os.mkfifo(folder / "fifo.pth")
    add("fifo", folder / "fifo.pth", "not a regular file")
    add("dev_zero", "/dev/zero", "not a regular file")
    os.mkdir(folder / "folder.pth")
    add("folder", folder / "folder.pth", "is a folder")
    return files


_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    from vgg_flax.formats.pth import PthError, load_pth
    files, valid = json.loads(sys.argv[1]), sys.argv[2]
    load_pth(valid)  # warm up: imports and first-use costs are not the hostile files' doing
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    results = {}
    for name, path in files.items():
        start = time.perf_counter()
        try:
            load_pth(path)
            results[name] = ["loaded", "", 0.0]
        except PthError as error:
            results[name] = [type(error).__name__, str(error), time.perf_counter() - start]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    state = load_pth(valid)
    print(json.dumps({"results": results, "grew_kib": peak - base,
                      "valid": {k: np.asarray(v).tolist() for k, v in state.items()}}))
    """
)


def _limit_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (6 * GIB, 6 * GIB))  # a guard for this machine only


def test_hostile_files_are_refused_quickly_in_little_memory(tmp_path):
    files = _hostile(tmp_path)
    valid = tmp_path / "valid.pth"
    expected = {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.tensor([1.5, -2.0])}
    torch.save(expected, valid)
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            json.dumps({k: p for k, (p, _) in files.items()}),
            str(valid),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        preexec_fn=_limit_memory,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    for name, (path, pattern) in files.items():
        kind, message, seconds = report["results"][name]
        assert kind in ("PthError", "UnsafePickleError"), (name, kind)
        assert path in message, (name, message)
        assert __import__("re").search(pattern, message), (name, message)
        assert seconds < 2.0, (name, seconds)
    assert report["grew_kib"] < 200 * 1024, report["grew_kib"]
    for key, tensor in expected.items():
        np.testing.assert_array_equal(report["valid"][key], tensor.numpy())


def test_allowed_stand_ins_cannot_be_changed_by_a_pickle():
    # Past the pre-scan, the stand-ins themselves refuse BUILD: frozen, slotted, made per load.
    before = pth._allowed()
    for module, name in [("torch", "FloatStorage"), ("torch._utils", "_rebuild_tensor_v2")]:
        payload = pickle.PROTO + b"\x02" + _global(module, name)
        payload += (
            _tuple(pickle.NONE, pickle.EMPTY_DICT + _str("name") + _str("x") + pickle.SETITEM)
            + pickle.BUILD
            + pickle.STOP
        )
        with pytest.raises(PthError, match="tries to change"):
            pth._RestrictedUnpickler(io.BytesIO(payload)).load()
    assert pth._allowed() == before
    unpickler = pth._RestrictedUnpickler(io.BytesIO(b""))
    assert unpickler.find_class("torch", "FloatStorage") is not pth._RestrictedUnpickler(
        io.BytesIO(b"")
    ).find_class("torch", "FloatStorage")


def test_a_refused_global_is_still_named(tmp_path):
    payload = _stop(
        pickle.PROTO + b"\x02" + _global("os", "system") + _tuple(_str("true")) + pickle.REDUCE
    )
    with pytest.raises(UnsafePickleError, match="os.system"):
        load_pth(_zip(tmp_path / "evil.pth", payload, {}))


@pytest.mark.parametrize("mmap", [False, True])
def test_a_flipped_byte_is_refused_also_when_mapped(tmp_path, mmap):
    path = tmp_path / "flipped.pth"
    values = np.arange(1000, dtype=np.float32)
    torch.save({"w": torch.from_numpy(values)}, path)
    data = bytearray(path.read_bytes())
    data[data.find(values.tobytes()[:64]) + 100] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(PthError, match=f"{path}.*CRC"):
        load_pth(path, mmap=mmap)


def test_overlapping_members_are_refused(tmp_path):
    # A second central-directory entry that points at the first storage's bytes: a zip bomb by
    # overlap (each read copies the same bytes again).
    path = tmp_path / "overlap.pth"
    payload = bytes(1 << 20)
    numel = len(payload) // 4
    pkl = _stop(_dict({f"w{i}": _tensor(str(i), numel, (numel,), (1,)) for i in range(2)}))
    raw = bytearray(_zip(path, pkl, {"0": payload}).read_bytes())
    eocd = raw.rfind(b"PK\x05\x06")
    cd_size, cd_offset = struct.unpack("<II", raw[eocd + 12 : eocd + 20])
    name = raw.find(b"archive/data/0", cd_offset)
    entry = name - 46
    lengths = struct.unpack("<HHH", raw[entry + 28 : entry + 34])
    clone = bytearray(raw[entry : entry + 46 + sum(lengths)])
    clone[46 + len("archive/data/0") - 1 : 46 + len("archive/data/0")] = b"1"
    count = struct.unpack("<H", raw[eocd + 10 : eocd + 12])[0] + 1
    tail = bytearray(raw[eocd:])
    tail[8:12] = struct.pack("<HH", count, count)
    tail[12:16] = struct.pack("<I", cd_size + len(clone))
    path.write_bytes(bytes(raw[:eocd] + clone + tail))
    with pytest.raises(PthError, match=f"{path}.*claim"):
        load_pth(path)


@pytest.mark.parametrize("fault", ["nan", "integer"])
def test_converter_refuses_nan_or_integer_weights(fault):
    weights = {k: v.numpy().copy() for k, v in torchvision.models.vgg11().state_dict().items()}
    if fault == "nan":
        weights["features.3.weight"][0, 0, 0, 0] = np.nan
    else:
        weights["features.0.bias"] = weights["features.0.bias"].astype(np.int64)
    with pytest.raises(ValueError, match=r"features\.(3\.weight|0\.bias).*(NaN|integers)"):
        from_torchvision(weights, "vgg11")

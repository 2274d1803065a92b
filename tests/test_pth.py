"""The .pth reader against files written by the real torch.save, in both of torch's formats."""

import collections
import os
import pickle
import subprocess
import sys
import zipfile

import ml_dtypes
import numpy as np
import pytest
import torch

from vgg_flax.formats.pth import PthError, UnsafePickleError, load_pth

FORMATS = {"zip": True, "legacy": False}


def _state() -> "collections.OrderedDict[str, torch.Tensor]":
    """Dtypes, offsets, strides and shared storages, as torch.save stores them."""
    torch.manual_seed(0)
    base = torch.randn(4, 6)
    state = collections.OrderedDict()
    state["float32"] = base
    state["float16"] = torch.randn(3, 5).half()
    state["bfloat16"] = torch.randn(7).bfloat16()
    state["int64"] = torch.tensor([-(2**40), 0, 3])
    state["scalar"] = torch.tensor(12)  # like num_batches_tracked
    state["offset_view"] = base[1:3]  # shares base's storage at an offset
    state["strided_view"] = base[:, 1::2]  # offset and strides, not contiguous
    state["transposed"] = base.t()
    state["expanded"] = torch.arange(3.0).expand(4, 3)  # stride 0
    state["empty"] = torch.zeros(0, 3)
    return state


def _expected(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


@pytest.fixture(scope="module", params=list(FORMATS))
def saved(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("pth") / f"{request.param}.pth"
    torch.save(_state(), path, _use_new_zipfile_serialization=FORMATS[request.param])
    assert zipfile.is_zipfile(path) == FORMATS[request.param]
    return path


@pytest.mark.parametrize("mmap", [False, True])
def test_reads_what_torch_wrote(saved, mmap):
    loaded = load_pth(saved, mmap=mmap)
    state = _state()
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        expected = _expected(tensor)
        assert loaded[key].dtype == expected.dtype, key
        assert loaded[key].shape == expected.shape, key
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)


def test_unwraps_a_state_dict_wrapper(tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": {"w": torch.ones(2)}}, path)
    np.testing.assert_array_equal(load_pth(path)["w"], np.ones(2, np.float32))


def test_reads_parameters(tmp_path):
    path = tmp_path / "params.pth"
    linear = torch.nn.Linear(3, 2)
    torch.save(dict(linear.named_parameters()), path)
    loaded = load_pth(path)
    np.testing.assert_array_equal(loaded["weight"], linear.weight.detach().numpy())


def test_loads_without_torch(saved):
    script = (
        "import sys, numpy as np\n"
        "from vgg_flax.formats.pth import load_pth\n"
        f"state = load_pth({str(saved)!r})\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print(repr(float(np.asarray(state['strided_view'], np.float64).sum())))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert float(out.stdout) == pytest.approx(float(_state()["strided_view"].double().sum()))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil_files(tmp_path):
    marker = tmp_path / "marker"
    payload = pickle.dumps({"w": _RunsCode(marker)}, protocol=2)
    legacy = tmp_path / "evil_legacy.pth"
    legacy.write_bytes(payload)
    archive = tmp_path / "evil_zip.pth"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("evil/data.pkl", payload)
        zf.writestr("evil/version", "3\n")
    return marker, [legacy, archive]


def test_refuses_a_pickle_that_runs_code(tmp_path):
    marker, files = _evil_files(tmp_path)
    for path in files:
        with pytest.raises(UnsafePickleError, match=r"refused global (posix|os|nt)\.system"):
            load_pth(path)
    assert not marker.exists()


def test_refuses_a_whole_module(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafePickleError, match=r"torch\.nn\.modules\.linear\.Linear.*state_dict"):
        load_pth(path)


@pytest.mark.parametrize("fraction", [0.5, 0.97])
def test_truncated_file(saved, tmp_path, fraction):
    data = saved.read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(PthError, match="truncated|corrupt"):
        load_pth(path)


def test_refuses_a_huge_expansion(tmp_path):
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(2**20, 2**20)}, path)  # 4 TiB if copied
    with pytest.raises(PthError, match="expands to"):
        load_pth(path)


def test_random_bytes_and_empty_file(tmp_path):
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(PthError, match="not a PyTorch checkpoint"):
        load_pth(path)
    path.write_bytes(b"")
    with pytest.raises(PthError, match="not a PyTorch checkpoint"):
        load_pth(path)


def test_corrupt_storage_fails_its_crc(tmp_path):
    path = tmp_path / "flipped.pth"
    torch.save({"w": torch.arange(1000.0)}, path)
    data = bytearray(path.read_bytes())
    offset = data.find(np.arange(1000.0, dtype=np.float32).tobytes()[:64])
    data[offset + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(PthError, match="CRC"):
        load_pth(path)

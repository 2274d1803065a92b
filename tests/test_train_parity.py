"""Training parity: vgg-flax's training step follows PyTorch's SGD step by step.

vgg11 and vgg11_bn at 64x64, batch 8, 10 steps with momentum 0.9, weight decay and one
learning-rate drop (a step drop for vgg11, a plateau drop for vgg11_bn), from the same
torchvision weights on the same batches; the reference is `torch.optim.SGD` with torch's own
schedulers (`vgg_flax.parity.training`). In float64 the cross-entropies agree to 1e-10 relative
at every step and every parameter, momentum buffer and running statistic to 1e-9; in float32
the final loss agrees to 1e-4. vgg11_bn uses the same dropout masks on both sides, on one
device and on four simulated ones. Each run is shared by the assertions about it (module
fixtures); the four-device run (a process of its own) runs beside the one-device runs.

The runs are of narrow nets (NARROW: every conv's channels and fc6/fc7 narrowed alike on both
sides): the step drop, the optimiser's update of every parameter, BatchNorm, dropout and the
float32 drift are the same code at any width, and a full-width float64 run costs ~8 GB and
minutes (docs/parity.md shows the full-width command; the forward and backward passes at full
width are tests/test_parity.py's).
"""

import os
import subprocess
import sys

import pytest
import torch

from vgg_flax.parity.training import TrainSetup, compare_training

# A four-device process beside this one: run first, while the worker is small (conftest.py).
pytestmark = pytest.mark.big_memory

LOSS_TOL = 1e-10
TENSOR_TOL = 1e-9
FLOAT32_LOSS_TOL = 1e-4
DEVICES = 4
# vgg11_bn: the plateau rule sees no gain at the evaluation after step 4 and drops the rate.
PLATEAU = {"schedule": "plateau", "evaluations": ((3, 0.5), (4, 0.5)), "patience": 1}
BN_SETUP = {"l2_mask": "kernels", "dropout": 0.5, **PLATEAU}
# Four simulated devices each hold a replica of the parameters, momentum and gradients: in
# float64, four replicas of the full vgg11_bn (133M parameters) peak at ~22 GB; docs/parity.md
# gives the command with --head-width 256 (a ~5 GB peak) for machines with the memory.
NARROW_HEAD = 64
NARROW_WIDTH = 0.25
NARROW = {"head_width": NARROW_HEAD, "width": NARROW_WIDTH}
FOUR_DEVICE_ARGS = [
    *("parity", "vgg11_bn", "--train-steps", "10", "--size", "64", "64", "--batch", "8"),
    *("--devices", str(DEVICES), "--head-width", str(NARROW_HEAD), "--dropout", "0.5"),
    *("--width", str(NARROW_WIDTH)),
    *("--l2-mask", "kernels", "--schedule", "plateau", "--patience", "1"),
    *("--evaluation", "3=0.5", "--evaluation", "4=0.5"),
]


# torch on one thread, here and in the four-device process: the nets are so small that a second
# thread waits more than it works, the more so beside other processes (a vgg11 float64 step at
# these sizes: 0.15 s on one thread; 0.5-2.7 s on two, beside another pytest worker).
TORCH_THREADS = 1


@pytest.fixture(scope="module", autouse=True)
def _torch_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def four_devices():
    """The four-device CLI run, started now, in a process of its own, beside the other runs.

    XLA_FLAGS must be set before JAX starts, hence the subprocess; torch reads OMP_NUM_THREADS.
    """
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
        OMP_NUM_THREADS=str(TORCH_THREADS),
    )
    runner = os.path.join(os.path.dirname(__file__), "parity_runner.py")
    process = subprocess.Popen(
        [sys.executable, runner, *FOUR_DEVICE_ARGS],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield process
    if process.poll() is None:
        process.kill()
        process.communicate()


@pytest.fixture(scope="module")
def vgg11_float64(four_devices):
    setup = TrainSetup(l2_mask="all", schedule="step", step_every=5, **NARROW)
    return compare_training("vgg11", setup)


@pytest.fixture(scope="module")
def vgg11_bn_float64_dropout(four_devices):
    return compare_training("vgg11_bn", TrainSetup(**BN_SETUP, **NARROW))


def _assert_exact(report):
    assert len(report.steps) == 10
    for step in report.steps:
        assert step.loss_rel <= LOSS_TOL, step
        assert step.lr_ours == pytest.approx(step.lr_torch, rel=1e-12), step
        for kind, worst in step.worst.items():
            assert worst.max_rel <= TENSOR_TOL, (step.step, kind, worst)
    assert report.parted is None
    # Training moved the loss: the comparison is not of two idle runs.
    assert report.steps[0].loss_torch != report.steps[-1].loss_torch


def test_vgg11_float64_matches_torch_sgd_with_a_step_drop(vgg11_float64):
    _assert_exact(vgg11_float64)
    rates = [s.lr_torch for s in vgg11_float64.steps]
    assert rates[0] == pytest.approx(0.005) and rates[4] == pytest.approx(0.01)  # warm-up
    assert rates[5] == pytest.approx(0.001)  # the step drop
    assert set(vgg11_float64.steps[0].worst) == {"params", "momentum"}
    assert len(vgg11_float64.final) == 2 * 2 * 11  # weight and bias of 11 layers, twice


def test_vgg11_bn_float64_matches_with_dropout_masks_and_a_plateau_drop(
    vgg11_bn_float64_dropout,
):
    report = vgg11_bn_float64_dropout
    _assert_exact(report)
    rates = [s.lr_torch for s in report.steps]
    assert rates[3] == pytest.approx(0.01) and rates[4] == pytest.approx(0.001)
    assert set(report.steps[0].worst) == {"params", "momentum", "stats"}
    names = {d.name for d in report.final}
    assert "features.1.running_var" in names and "classifier.6.weight" in names


# lr 1e-3 for vgg11 (the paper's 1e-2 scaled to batch 8). vgg11_bn at that rate is chaotic in
# float32: torch's own float32 run ends 9e-4 (relative) from its float64 run, so no float32
# implementation can be held to 1e-4 there; at 1e-4 torch's float32 run stays within 3e-6 of its
# float64 run at every step (and the loss still moves by 1.5%).
@pytest.mark.parametrize("arch, lr", [("vgg11", 1e-3), ("vgg11_bn", 1e-4)])
def test_float32_final_loss_agrees_and_drift_is_reported(arch, lr):
    setup = TrainSetup(dtype="float32", dropout=0.5, learning_rate=lr, **NARROW)
    report = compare_training(arch, setup)
    final = report.steps[-1]
    assert final.loss_rel <= FLOAT32_LOSS_TOL, final
    assert all("params" in s.worst for s in report.steps)  # the drift of every step
    assert report.steps[0].loss_torch != final.loss_torch


def test_four_simulated_devices_match_one_torch_process(four_devices):
    stdout, stderr = four_devices.communicate(timeout=1200)
    print(stdout)  # the table, for `pytest -s`
    assert four_devices.returncode == 0, stdout + stderr  # 0: nothing parts beyond 1e-9
    lines = stdout.splitlines()
    assert f"{DEVICES} device(s)" in lines[0] and f"head width {NARROW_HEAD}" in lines[0]
    assert f"width {NARROW_WIDTH:g}" in lines[0]
    rows = [line.split() for line in lines if line[:4].strip().isdigit()]
    assert [int(r[0]) for r in rows] == list(range(1, 11))
    assert float(rows[3][1]) == pytest.approx(0.01) and float(rows[4][1]) == pytest.approx(1e-3)
    for row in rows:
        assert float(row[4]) <= LOSS_TOL, row  # loss rel
        assert all(float(v) <= TENSOR_TOL for v in row[5:8]), row
    assert "agree within 1e-09 (relative) at every step" in stdout


def test_options_that_do_not_apply_are_clear_errors():
    with pytest.raises(ValueError, match="split over 3 devices"):
        compare_training("vgg11", TrainSetup(batch=8, devices=3))
    with pytest.raises(ValueError, match="plateau"):
        compare_training("vgg11", TrainSetup(evaluations=((1, 0.5),)))
    with pytest.raises(ValueError, match="head width"):
        compare_training("vgg11", TrainSetup(head_width=0))

"""Training parity: vgg-flax's training step follows PyTorch's SGD step by step.

vgg11 and vgg11_bn at 64x64, batch 8, 10 steps with momentum 0.9, weight decay and one
learning-rate drop (a step drop for vgg11, a plateau drop for vgg11_bn), from the same
torchvision weights on the same batches; the reference is `torch.optim.SGD` with torch's own
schedulers (`vgg_flax.parity.training`). In float64 the cross-entropies agree to 1e-10 relative
at every step and every parameter, momentum buffer and running statistic to 1e-9; in float32
the final loss agrees to 1e-4. vgg11_bn uses the same dropout masks on both sides, on one
device and on four simulated ones. Each run is shared by the assertions about it (module
fixtures); the four-device run (a process of its own) runs beside the one-device runs.

One run is full width: vgg11_bn in float64 with dropout, 4096-unit fc6/fc7 (the full-width
training parity of every layer kind: conv, BatchNorm, dropout, the classifier head). The others
keep the full conv trunk and narrow fc6/fc7 to NARROW_HEAD units: the step drop, the optimiser's
update of every parameter and the float32 drift are the same code at any head width, and a
full-width float64 run costs ~8 GB and minutes.
"""

import os
import subprocess
import sys

import pytest

from vgg_flax.parity.training import TrainSetup, compare_training

# Full-width float64 runs (~8 GB): before the rest of the suite grows this process.
pytestmark = pytest.mark.big_memory

LOSS_TOL = 1e-10
TENSOR_TOL = 1e-9
FLOAT32_LOSS_TOL = 1e-4
DEVICES = 4
# vgg11_bn: the plateau rule sees no gain at the evaluation after step 4 and drops the rate.
PLATEAU = {"schedule": "plateau", "evaluations": ((3, 0.5), (4, 0.5)), "patience": 1}
BN_SETUP = {"l2_mask": "kernels", "dropout": 0.5, **PLATEAU}
# Four simulated devices each hold a replica of the parameters, momentum and gradients: in
# float64, four replicas of the full vgg11_bn (133M parameters) peak at ~22 GB. This run keeps
# the full conv trunk and narrows fc6/fc7 to 256 units (16M parameters): a ~5 GB peak.
NARROW_HEAD = 256
NARROW = {"head_width": NARROW_HEAD}
FOUR_DEVICE_ARGS = [
    *("parity", "vgg11_bn", "--train-steps", "10", "--size", "64", "64", "--batch", "8"),
    *("--devices", str(DEVICES), "--head-width", str(NARROW_HEAD), "--dropout", "0.5"),
    *("--l2-mask", "kernels", "--schedule", "plateau", "--patience", "1"),
    *("--evaluation", "3=0.5", "--evaluation", "4=0.5"),
]


@pytest.fixture(scope="module")
def four_devices():
    """The four-device CLI run, started now, in a process of its own, beside the other runs.

    XLA_FLAGS must be set before JAX starts, hence the subprocess.
    """
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}")
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
    return compare_training("vgg11_bn", TrainSetup(**BN_SETUP))


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

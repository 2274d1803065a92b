"""experiments/perceptual_train.py on 4 simulated devices: the LPIPS + DISTS loss falls."""

import json
import os
import subprocess
import sys
from pathlib import Path

from quick_compile import quick_compile_env

ROOT = Path(__file__).resolve().parent.parent


def test_denoiser_trains_on_four_devices(tmp_path):
    # XLA_FLAGS must be set before JAX starts: a process of its own. XLA's quick compile
    # (tests/quick_compile.py): compiling dominates 4 steps, and the loss falls however the step
    # is compiled.
    env = quick_compile_env(dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    command = [sys.executable, "-m", "experiments.perceptual_train", "--trunk", "random"]
    command += ["--steps", "4", "--batch", "4", "--size", "32", "--skip-memory"]
    command += ["--lr", "3e-3", "--out", str(tmp_path)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "perceptual_train.json").read_text())
    assert report["devices"] == 4 and report["remat"] and report["trunk_dtype"] == "bfloat16"
    assert report["loss_last"] < report["loss_first"]
    assert set(report["memory"]) == {"remat"} and report["memory"]["remat"]["temp_mib"] > 0
    assert (tmp_path / "loss.png").stat().st_size > 0

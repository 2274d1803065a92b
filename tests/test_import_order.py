"""torch after vgg-flax imported TensorFlow: it works, or fails naming the fix; never a segfault.

Each case runs in a fresh process (the root conftest imports torch first in this one); both run at
once to halve the wait.
"""

import os
import subprocess
import sys

import pytest

from vgg_flax._import_order import FIX

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The subprocesses import torch, torchvision and TensorFlow (not seen in the imports).
pytestmark = [pytest.mark.torch, pytest.mark.tensorflow]

# experiments.dataset_stats imports TensorFlow through vgg_flax.data.stats.
WORKS = (
    "import vgg_flax.data; import experiments.dataset_stats; from vgg_flax.data import pipeline\n"
    "import torch; import torchvision\n"
    "print(torchvision.ops.nms(torch.zeros(1, 4), torch.ones(1), 0.5).tolist())"
)
# TensorFlow imported by the user before vgg-flax: too late to load triton first.
TOO_LATE = "import tensorflow; import vgg_flax.data; import torchvision"


def test_torch_after_vgg_flax_data_works_or_names_the_fix():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for code in (WORKS, TOO_LATE)
    ]
    (works_out, works_err), (late_out, late_err) = (run.communicate(timeout=300) for run in runs)
    works, late = runs
    assert works.returncode == 0, works_err[-3000:]
    assert works_out.strip().endswith("[0]")
    assert late.returncode not in (-11, 139), "segfault instead of an ImportError"
    assert late.returncode == 1, late_err[-3000:]
    assert FIX in late_err

"""torch after vgg-flax imported TensorFlow: it works, or fails naming the fix; never a segfault.
And TensorFlow's import leaves Keras unloaded, which still works afterwards.

Each case runs in a fresh process (the root conftest imports torch first in this one); all run at
once to cut the wait.
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
# Keras is hidden from TensorFlow's import (half its time), not from the process.
KERAS_LATER = (
    "import sys; from vgg_flax.data._tf import tf\n"
    "print(sorted({'keras', 'sklearn'} & set(sys.modules)))\n"
    "import keras; import numpy as np\n"
    "print(keras.layers.Dense(3)(np.zeros((1, 2), np.float32)).shape)\n"
    "print(tf.keras.layers.Dense(4)(tf.zeros((1, 2))).shape)"
)


def test_torch_and_keras_after_vgg_flax_data_work_or_name_the_fix():
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
        for code in (WORKS, TOO_LATE, KERAS_LATER)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    (works_out, works_err), (late_out, late_err), (keras_out, keras_err) = outputs
    works, late, keras = runs
    assert works.returncode == 0, works_err[-3000:]
    assert works_out.strip().endswith("[0]")
    assert late.returncode not in (-11, 139), "segfault instead of an ImportError"
    assert late.returncode == 1, late_err[-3000:]
    assert FIX in late_err
    assert keras.returncode == 0, keras_err[-3000:]
    assert keras_out.split("\n")[:3] == ["[]", "(1, 3)", "(1, 4)"]

"""Protocol evaluation over several devices and several hosts equals evaluation on one device.

A tiny random VGG-A is evaluated densely on a generated image folder whose size (7) splits over
neither 2 nor 4, with images of several sizes (several padded shapes, filler rows). One process
with 4 simulated CPU devices scores every batch on 1 device and on all 4; two processes on
127.0.0.1 (gloo) each read their own slice of the split. Every run must count each image once
and give the one-device run's errors and per-image posteriors.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import train_tiny
from PIL import Image
from test_data_multihost import free_port

from vgg_flax import save
from vgg_flax.evaluate.metrics import TopKCounts
from vgg_flax.models.vgg import create_model
from vgg_flax.train.init import init_variables

# The workers read the image folder through vgg_flax.data (subprocesses: not seen in the imports).
pytestmark = pytest.mark.tensorflow

# Rescaled to smaller side 224 and padded: 224x224, 224x256 and 256x224 (three compiled shapes).
SIZES = [(224, 224), (230, 250), (224, 256), (240, 240), (250, 224), (224, 230), (300, 300)]
LIMIT = 3  # the first 3 images all lie in host 0's slice: host 1 scores none

WORKER = r"""
import json, sys
mode, root = sys.argv[1], sys.argv[2]
import jax
if mode == "hosts":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=sys.argv[3], num_processes=2,
                               process_id=int(sys.argv[4]))
import numpy as np
from vgg_flax import data, load, parallel
from vgg_flax.evaluate import runner
from vgg_flax.evaluate.batching import Scorer

config = data.default_config(source="folder", folder=root + "/images", normalize="torchvision")
model, variables, _ = load(root + "/net")

def run(scorer, limit=None):
    found, mine = {}, []
    result = runner.evaluate_dataset([scorer], config, protocol="dense", scales=[224],
                                     batch_size=4, limit=limit, posteriors=found,
                                     progress=lambda it, n: mine.append(n) or it)
    return {"examples": result["examples"], "top1": result["top1_error"],
            "top5": result["top5_error"], "shapes": sorted(scorer.shapes), "mine": mine[0],
            "posteriors": {i: [label, p.tolist()] for i, (label, p) in found.items()}}

out = {"local_devices": jax.local_device_count(), "process": jax.process_index()}
if mode == "devices":
    one = Scorer(model, variables, parallel.make_mesh(jax.local_devices()[:1]))
    four = Scorer(model, variables)
    out["one"], out["four"] = run(one), run(four)
    images = np.random.default_rng(0).normal(size=(3, 224, 256, 3)).astype(np.float32)
    valid = np.array([[224, 256], [224, 230], [224, 224]], np.int32)
    out["direct"] = float(np.abs(four(images, valid) - one(images, valid)).max())
else:
    scorer = Scorer(model, variables)
    out["full"], out["limit"] = run(scorer), run(scorer, LIMIT)
print("RESULT", json.dumps(out))
""".replace("LIMIT", str(LIMIT))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mesh")
    rng = np.random.default_rng(0)
    for index, (height, width) in enumerate(SIZES):
        folder = root / "images" / "validation" / f"class{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")
    model = create_model("A", num_classes=10, **train_tiny.TINY)
    variables = init_variables(model, jax.random.key(0), 32)
    save(root / "net", model, variables)
    return root


def start(args: list[str], xla_flags: str | None) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    if xla_flags:
        env["XLA_FLAGS"] = xla_flags
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def errors(posteriors: dict) -> dict:
    labels = np.array([label for label, _ in posteriors.values()])
    scores = np.array([p for _, p in posteriors.values()])
    return TopKCounts().add(scores, labels).errors()


def assert_same_run(run: dict, reference: dict) -> None:
    assert run["examples"] == len(reference["posteriors"])
    assert (run["top1"], run["top5"]) == (reference["top1"], reference["top5"])
    assert run["posteriors"].keys() == reference["posteriors"].keys()
    for index, (label, posterior) in reference["posteriors"].items():
        assert run["posteriors"][index][0] == label
        np.testing.assert_allclose(run["posteriors"][index][1], posterior, rtol=1e-6, atol=1e-7)


def test_four_devices_and_two_hosts_give_the_errors_of_one_device(root):
    address = f"127.0.0.1:{free_port()}"
    procs = [start(["devices", str(root)], "--xla_force_host_platform_device_count=4")]
    procs += [start(["hosts", str(root), address, str(i)], None) for i in range(2)]
    devices, *hosts = [result(proc) for proc in procs]

    one = devices["one"]
    assert devices["local_devices"] == 4
    assert one["examples"] == len(SIZES) and len(one["posteriors"]) == len(SIZES)
    assert (one["top1"], one["top5"]) == tuple(errors(one["posteriors"]).values())
    # Every batch split over 4 devices: row counts are multiples of 4, on one device of 4.
    assert all(rows % 4 == 0 for rows, _, _ in devices["four"]["shapes"])
    assert_same_run(devices["four"], one)
    assert devices["direct"] <= 1e-7  # a batch of 3 rows gets one filler row on 4 devices

    first = {i: p for i, p in one["posteriors"].items() if int(i) < LIMIT}
    for host in hosts:
        assert host["local_devices"] == 1
        assert_same_run(host["full"], one)  # every host reports the whole split
        assert host["limit"]["examples"] == LIMIT
        assert (host["limit"]["top1"], host["limit"]["top5"]) == tuple(errors(first).values())
        assert host["limit"]["posteriors"].keys() == first.keys()
    # Each host scored only its own slice: 3 + 4 images, and with the limit 3 + 0.
    assert [host["full"]["mine"] for host in hosts] == [3, 4]
    assert [host["limit"]["mine"] for host in hosts] == [LIMIT, 0]

"""Two real JAX processes on loopback (gloo): each host reads its own slice, batches are global."""

import json
import os
import socket
import subprocess
import sys

import pytest

# The workers read TFDS data through vgg_flax.data (in subprocesses: not seen in the imports).
pytestmark = pytest.mark.tensorflow

WORKER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
import numpy as np
from jax.experimental import multihost_utils
from vgg_flax import data, parallel

mesh = parallel.make_mesh()
it = data.train_iterator(None, global_batch_size=8, seed=0, mesh=mesh)
batch = next(it)
masked = 0
for b in data.eval_iterator(None, global_batch_size=64, mesh=mesh):
    masked += int(multihost_utils.process_allgather(b["mask"], tiled=True).sum())
print("RESULT", json.dumps({
    "global_labels": multihost_utils.process_allgather(batch["label"], tiled=True).tolist(),
    "local_labels": np.concatenate(
        [np.asarray(s.data) for s in batch["label"].addressable_shards]).tolist(),
    "state": it.get_state(),
    "masked": masked,
    "keys": [ex["key"] for ex in data.eval_images(None, scale_q=32)],
}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_hosts_read_disjoint_slices_into_global_batches():
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, address, str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    host0, host1 = results
    assert host0["global_labels"] == host1["global_labels"]
    assert host0["global_labels"] == host0["local_labels"] + host1["local_labels"]
    for r in results:  # 4 rows per host; get_state gathers every host's position
        assert r["state"]["positions"] == [4, 4] and r["masked"] == 360
    assert len(host0["keys"]) == len(host1["keys"]) == 180
    assert not set(host0["keys"]) & set(host1["keys"])

"""keep_freed_memory: a freed large block is reused without new page faults; every program
(`vgg_flax.cli.entry_point`) applies it; it can be turned off; the environment form agrees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgg_flax import host_memory

ROOT = Path(__file__).resolve().parent.parent

# Page faults of ten 64 MB allocations, each freed at once, after one to warm up: called
# directly after keep_freed_memory() ("direct"), inside a vgg-flax program ("program") or with
# nothing applied ("none").
FAULTS = """
import resource, sys
import numpy as np
from vgg_flax.cli import entry_point
from vgg_flax.host_memory import keep_freed_memory

def faults(argv=None):
    np.ones(1 << 23)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        np.ones(1 << 23)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return 0

how = sys.argv[1]
if how == "direct":
    print(keep_freed_memory())
    faults()
elif how == "program":
    entry_point("faults")(faults)([])
else:
    faults()
"""


def _faults(how: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in host_memory.ENVIRONMENT}
    return subprocess.run(
        [sys.executable, "-c", FAULTS, how],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


@pytest.fixture(scope="module")
def fresh() -> int:
    """Faults with glibc's defaults: each block mapped afresh."""
    (faults,) = map(int, _faults("none"))
    return faults


def test_freed_blocks_are_reused_without_page_faults_in_every_program(fresh):
    applied, kept = _faults("direct")
    (in_program,) = map(int, _faults("program"))
    assert applied == "True"
    # glibc's default maps each block afresh: hundreds of faults (thousands without huge pages)
    assert fresh >= 100 and int(kept) * 10 < fresh and in_program * 10 < fresh


def test_turned_off_or_given_by_environment(fresh):
    off, still_fresh = _faults("direct", **{host_memory.ENV: "0"})
    (by_environment,) = map(int, _faults("none", **host_memory.ENVIRONMENT))
    assert off == "False" and int(still_fresh) * 10 > fresh
    assert by_environment * 10 < fresh

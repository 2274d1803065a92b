"""Every experiments script answers --help at once: JAX and TensorFlow load only after parsing.

Each script runs in a fresh process, as a module (`python -m experiments.X`) and as a file from
the repository root (`python experiments/X.py`); --help must exit 0 within 3 s, and a second
process checks that answering it imported neither JAX nor TensorFlow (the import is what costs).
No option's help states its default twice ("(default: ...)" after a help that says it).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ("evaluate", "reproduce_tables", "dataset_stats", "train", "compare")
HEAVY = ("jax", "tensorflow", "torch")

# Runs a script's --help as `python -m` would and prints which heavy modules got imported.
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
except SystemExit as stop:
    assert stop.code in (0, None), stop.code
print("heavy:", *(name for name in HEAVY if name in sys.modules))
""".replace("HEAVY", repr(HEAVY))


def run(args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    return done, time.monotonic() - started


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_fast_as_module_and_as_file(script):
    for args in (["-m", f"experiments.{script}", "--help"], [f"experiments/{script}.py", "--help"]):
        done, seconds = run(args)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "usage" in done.stdout.lower() or "--config" in done.stdout, done.stdout[:500]
        assert seconds < 3, f"{' '.join(args)} took {seconds:.1f} s"
        for option in re.split(r"\n(?=  -)", done.stdout.partition("\noptions:")[2]):
            assert option.lower().count("default") <= 1, option
            assert "(default: None)" not in " ".join(option.split()), option


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_no_heavy_framework(script):
    done, _ = run(["-c", PROBE, f"experiments.{script}"])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "heavy:", done.stdout[-500:]

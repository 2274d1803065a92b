"""The benchmark commands run and write their blocks (their smallest runs; no time is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The benchmarks time PyTorch beside vgg-flax (in a subprocess: not seen in the imports).
pytestmark = pytest.mark.torch


def run(script: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )


def test_grid_writes_one_cell_and_its_block(tmp_path):
    markdown = tmp_path / "B.md"
    markdown.write_text("# Kept\n\ntext outside the blocks\n")
    out = tmp_path / "grid.json"
    run(
        "grid.py",
        *("--arch", "vgg11_bn", "--setting", "32", "--dtype", "float32", "--task", "forward"),
        *("--rounds", "1", "--reps", "1", "--no-memory", "--no-evaluate"),
        *("--json", str(out), "--markdown", str(markdown)),
    )
    text = markdown.read_text()
    assert text.startswith("# Kept\n\ntext outside the blocks")
    assert (
        "<!-- benchmark:grid -->" in text and "| vgg11_bn | 32x32 b32 | float32 | forward |" in text
    )
    cells = json.loads(out.read_text())["cells"]
    assert len(cells) == 1 and cells[0]["jax_s"] > 0 and cells[0]["torch_s"] > 0


def test_conv_forms_times_every_form_beside_pytorch(tmp_path):
    markdown = tmp_path / "B.md"
    run(
        "conv_forms.py",
        *("--maps", "14x16", "--batch", "2", "--reps", "1", "--markdown", str(markdown)),
    )
    rows = [line for line in markdown.read_text().splitlines() if line.startswith("| float")]
    rows += [line for line in markdown.read_text().splitlines() if line.startswith("| bfloat16")]
    forms = {line.split(" | ")[3] for line in rows}
    assert "PyTorch" in forms and "vgg-flax (im2col by rows)" in forms
    assert "computed in float32" in forms  # the bfloat16 forms
    assert "XLA bfloat16, float32 accumulation" in markdown.read_text()

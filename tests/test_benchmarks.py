"""The benchmark commands run and write their blocks (their smallest runs; no time is asserted).

Each runs in this process as `python benchmarks/SCRIPT ...` runs it (a process of its own would
import torch, JAX and vgg-flax again for the same code).
"""

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
# The benchmarks time PyTorch beside vgg-flax (run as scripts: not seen in the imports).
pytestmark = pytest.mark.torch


def run(script: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python benchmarks/SCRIPT ARGS` from the repository's root, in this process: the script as
    __main__, its folder first on sys.path; it must exit 0. The modules it imports from its
    folder (`models`, `evaluate`) are its own (any of this process's by those names are set
    aside meanwhile) and dropped afterwards; torch's thread count is restored."""
    import torch

    own = {path.stem for path in BENCHMARKS.glob("*.py")}
    for name in own & set(sys.modules):
        monkeypatch.delitem(sys.modules, name)
    before = set(sys.modules)
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [str(BENCHMARKS), *sys.path])
    monkeypatch.setattr(sys, "argv", [str(BENCHMARKS / script), *args])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(BENCHMARKS / script), run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (0, None), f"{script} exited {stop.code}"
    finally:
        torch.set_num_threads(threads)
        for name in set(sys.modules) - before:
            if name.split(".")[0] in own:
                del sys.modules[name]


def test_grid_writes_one_cell_and_its_block(tmp_path, monkeypatch):
    markdown = tmp_path / "B.md"
    markdown.write_text("# Kept\n\ntext outside the blocks\n")
    out = tmp_path / "grid.json"
    run(
        "grid.py",
        *("--arch", "vgg11_bn", "--setting", "32", "--dtype", "float32", "--task", "forward"),
        *("--rounds", "1", "--reps", "1", "--no-memory", "--no-evaluate"),
        *("--json", str(out), "--markdown", str(markdown)),
        monkeypatch=monkeypatch,
    )
    text = markdown.read_text()
    assert text.startswith("# Kept\n\ntext outside the blocks")
    assert (
        "<!-- benchmark:grid -->" in text and "| vgg11_bn | 32x32 b32 | float32 | forward |" in text
    )
    cells = json.loads(out.read_text())["cells"]
    assert len(cells) == 1 and cells[0]["jax_s"] > 0 and cells[0]["torch_s"] > 0


def test_conv_forms_times_every_form_beside_pytorch(tmp_path, monkeypatch):
    markdown = tmp_path / "B.md"
    run(
        "conv_forms.py",
        *("--maps", "14x16", "--batch", "1", "--reps", "1", "--markdown", str(markdown)),
        monkeypatch=monkeypatch,
    )
    rows = [line for line in markdown.read_text().splitlines() if line.startswith("| float")]
    rows += [line for line in markdown.read_text().splitlines() if line.startswith("| bfloat16")]
    forms = {line.split(" | ")[3] for line in rows}
    assert "PyTorch" in forms and "vgg-flax (im2col by rows)" in forms
    assert "computed in float32" in forms  # the bfloat16 forms
    assert "XLA bfloat16, float32 accumulation" in markdown.read_text()

"""The "Layout" section of docs/development.md names every module of the package and every
experiments script, and every package it names exists: a module added or moved shows up here
until the docs say so.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def layout_bullets() -> dict[str, str]:
    """The Layout section's bullets, keyed by the path each starts with (`vgg_flax/models/`)."""
    text = (ROOT / "docs" / "development.md").read_text()
    section = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", text, re.S | re.M).group(1)
    bullets = re.findall(r"^- (.*?)(?=^- |\Z)", section, re.S | re.M)
    return {re.match(r"`([^`]+)`", bullet).group(1): bullet for bullet in bullets}


def test_layout_names_every_module():
    bullets = layout_bullets()
    packages = [
        ROOT / "vgg_flax",
        *sorted(p.parent for p in (ROOT / "vgg_flax").glob("*/__init__.py")),
    ]
    for package in packages:
        key = package.relative_to(ROOT).as_posix() + "/"
        assert key in bullets, f"Layout (docs) has no bullet for {key}"
        named = set(re.findall(r"`([\w.]+)`", bullets[key]))
        missing = [m.stem for m in package.glob("*.py") if m.stem not in named]
        missing = [m for m in missing if m != "__init__" or package.name == "vgg_flax"]
        assert not missing, f"Layout (docs) does not name {key}: {', '.join(sorted(missing))}"
    scripts = {p.name for p in (ROOT / "experiments").glob("*.py")} - {"__init__.py"}
    named = set(re.findall(r"`([\w.]+)`", bullets["experiments/"]))
    assert scripts <= named, f"Layout (docs) does not name experiments/ {scripts - named}"


def test_layout_names_only_what_exists():
    for key in layout_bullets():
        assert (ROOT / key).exists(), f"Layout (docs) names {key}, which does not exist"

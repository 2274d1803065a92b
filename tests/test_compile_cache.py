"""The persistent compilation cache: where it goes, how it is turned off, what it keeps.

Each case runs in a fresh process: JAX's cache folder is process-wide configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = (
    "import jax; from vgg_flax import compile_cache; "
    "print(compile_cache.enable(), jax.config.jax_compilation_cache_dir)"
)


def _enable(env: dict[str, str]) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    clean.pop("VGG_FLAX_COMPILE_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-c", CODE], env={**clean, **env}, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_the_environment_variable_names_the_folder(tmp_path):
    folder = str(tmp_path / "cache")
    assert _enable({"VGG_FLAX_COMPILE_CACHE": folder}) == [folder, folder]
    assert os.path.isdir(folder)


def test_the_default_folder_is_under_the_user_cache(tmp_path):
    assert _enable({"HOME": str(tmp_path)}) == [str(tmp_path / ".cache/vgg_flax/compile")] * 2


@pytest.mark.parametrize("off", ["off", "0", "none"])
def test_off_leaves_jax_without_a_cache(off):
    assert _enable({"VGG_FLAX_COMPILE_CACHE": off}) == ["None", "None"]


def test_a_folder_configured_in_jax_is_kept(tmp_path):
    mine, theirs = str(tmp_path / "mine"), str(tmp_path / "theirs")
    env = {"VGG_FLAX_COMPILE_CACHE": mine, "JAX_COMPILATION_CACHE_DIR": theirs}
    assert _enable(env) == [theirs, theirs]
    assert not os.path.exists(mine)

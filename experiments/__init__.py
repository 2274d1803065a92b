"""Runnable experiments: `python -m experiments.train --config experiments/configs/<row>.py`.

Installed as `vgg_flax.experiments` (pyproject.toml's package-dir: no top-level package named
`experiments` in site-packages), which `vgg-flax train|evaluate|reproduce` run from any folder.
Its modules import each other relatively, so they work under both names.
"""

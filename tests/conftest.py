"""Fixtures shared by several test files."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_runner import small_config

# A short digits run: narrow VGG-A, 160 steps of 32 (~75% test accuracy); its evaluation covers
# the whole test split. Steps are cheap (~20/s on a CPU); compiling dominates.
DIGITS_RUN = {
    "batch_size": 32,
    "total_steps": 160,
    "eval_every_steps": 160,
    "eval_batches": 0,  # the whole split, as experiments.evaluate reads it
    "eval_batch_size": 120,
    "checkpoint.every_steps": 160,
    "log_every_steps": 40,
    "dropout": 0.0,  # the 32-wide head learns faster without it
    "optim.learning_rate": 0.02,
    "optim.warmup_steps": 10,
    "optim.step_epochs": 3,
}


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> tuple[Path, dict]:
    """(workdir, summary) of one short digits training run, made once per test session.

    Tests read it and must not change it (copy it first).
    """
    from vgg_flax.train import trainer

    workdir = tmp_path_factory.mktemp("digits_run")
    summary = trainer.train(small_config(DIGITS_RUN), str(workdir))
    return workdir, summary

"""The training loop: `train(config, workdir)` runs one experiment config end to end.

Read top to bottom, in the order of its headed sections: set up (hosts, mesh), input, model and
optimiser, initial state, checkpoints (resume), steps, evaluation, loop, end of run. The config
fields are those of `experiments/configs/digits.py` (see docs/training.md).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from vgg_flax import compile_cache
from vgg_flax.models.arch import arch_label
from vgg_flax.models.vgg import architecture, create_model
from vgg_flax.parallel import make_mesh, replicated
from vgg_flax.train import metrics as metrics_lib
from vgg_flax.train import optim, step_cache
from vgg_flax.train.init import copy_layers, init_variables, warm_start_layers, with_fresh_head
from vgg_flax.train.step import create_state, make_eval_step, make_train_step, model_variables
from vgg_flax.transfer import finetune
from vgg_flax.weights import checkpoint
from vgg_flax.weights import loading as loader
from vgg_flax.weights import usage as usage_lib
from vgg_flax.weights.atomic import atomic_write

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the step and the last checkpoint."""


def initialize_distributed() -> None:
    """Join a multi-host run when the environment describes one; no-op on a single host.

    JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and JAX_PROCESS_ID set the run explicitly;
    clusters JAX detects by itself (SLURM, Open MPI, Cloud TPU) are joined with no arguments.
    """
    if jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # Only the CPU backend reads this; it lets CPU-only hosts run collectives across processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif (
        int(os.environ.get("SLURM_NTASKS", "1")) > 1
        or int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1
    ):
        jax.distributed.initialize()


class _StopOnSigterm:
    """Remembers a SIGTERM so the loop can checkpoint and leave cleanly (pre-emption)."""

    def __enter__(self) -> _StopOnSigterm:
        self.requested = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():  # signals need the main thread
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def check_config(config: Any) -> None:
    """Refuse option values the loop cannot use, before any expensive work starts."""
    choices = {
        "dtype": (config.dtype, tuple(DTYPES)),
        "optim.schedule": (config.optim.schedule, optim.SCHEDULES),
        "optim.l2_mask": (config.optim.l2_mask, optim.L2_MASKS),
    }
    for field, (value, known) in choices.items():
        if value not in known:
            raise ValueError(f"unknown {field} {value!r}; choose one of {', '.join(known)}")
    for field in ("batch_size", "eval_batch_size", "log_every_steps", "checkpoint.every_steps"):
        node = config
        for part in field.split("."):
            node = node[part]
        if node < 1:
            raise ValueError(f"{field} must be at least 1, got {node}")
    rate = config.optim.learning_rate
    if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
        raise ValueError(f"optim.learning_rate must be a positive number, got {rate!r}")
    if not 0 < config.optim.factor < 1:
        raise ValueError(
            f"optim.factor must lie strictly between 0 and 1 (each drop multiplies the learning "
            f"rate by it), got {config.optim.factor!r}"
        )
    if config.optim.schedule == "plateau" and config.optim.patience < 1:
        raise ValueError(
            f"optim.patience must be at least 1 evaluation, got {config.optim.patience}"
        )


def _check_devices(config: Any, devices: int) -> None:
    """Batches are split evenly over the devices: refuse sizes that do not divide."""
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % devices:
            raise ValueError(
                f"{field} {config[field]} is not divisible by the {devices} devices; use a "
                f"multiple of {devices}"
            )


def train(config: Any, workdir: str) -> dict[str, Any]:
    """Train `config` (an ml_collections ConfigDict) in `workdir`; returns the run's summary.

    Resumes from the latest checkpoint in `workdir/checkpoints` when there is one. Leaves there
    the checkpoints, `model/` (the final weights for `vgg_flax.load`), metrics.jsonl, TensorBoard
    events under tb/ (with the config as hparams), config.json, metrics.png and summary.json.
    """
    from vgg_flax import data  # the input pipeline needs TensorFlow: import it only to train
    from vgg_flax.data import pipeline  # noqa: F401  # TensorFlow's import: start-up, not training

    config = finetune.complete(config)  # fine-tuning: the weights' architecture and inputs
    check_config(config)
    started = time.perf_counter()
    cache = compile_cache.enable()  # a rerun of the same config skips compiling its steps
    # ----- Set up: hosts, devices, the mesh --------------------------------------------------
    initialize_distributed()
    mesh = make_mesh()
    _check_devices(config, mesh.devices.size)
    os.makedirs(workdir, exist_ok=True)
    writer = metrics_lib.MetricsWriter(workdir)
    writer.write_config(config.to_dict())  # config.json and TensorBoard hparams

    # ----- Input --------------------------------------------------------------------------
    data_config = data.default_config(**dict(config.data))
    train_iter = data.train_iterator(
        data_config, global_batch_size=config.batch_size, seed=config.seed, mesh=mesh
    )
    train_iter.warm_up()  # its first batches are made while the model initialises and compiles
    num_classes = train_iter.num_classes
    steps_per_epoch = max(1, train_iter.num_examples // config.batch_size)
    total_steps = config.total_steps or round(config.num_epochs * steps_per_epoch)
    eval_every = config.eval_every_steps or steps_per_epoch

    # ----- Model and optimiser --------------------------------------------------------------
    model = create_model(
        config.arch,
        batch_norm=config.batch_norm,
        width=config.width,
        head_width=config.head_width,
        pooling=config.pooling,
        num_classes=num_classes,
        dropout_rate=config.dropout,
        weight_init=config.init,
        init_std=config.init_std,
        dtype=DTYPES[config.dtype],
    )
    identity = architecture(model)
    record = usage(model, data_config, train_iter.source.class_names)
    step_every = round(config.optim.step_epochs * steps_per_epoch)

    # ----- Initial state: fresh, or weights from a trained net ------------------------------
    init_key, dropout_key = _split_seed(config.seed)
    variables = init_variables(model, init_key, data_config.crop_size)
    if config.init_from:
        variables = start_from(
            variables, model.arch, config.init_from, config.init_skip, record.preprocessing
        )
    # Fine-tuning: frozen layers (rate 0) and per-layer rates; frozen BatchNorm statistics.
    layer_rates = finetune.layer_rates(config, variables["params"])
    frozen_bn = finetune.frozen_batch_norms(config, layer_rates)
    tx = optim.make_optimizer(
        optim.schedule(
            config.optim.schedule,
            base=config.optim.learning_rate,
            factor=config.optim.factor,
            step_every=step_every,
            warmup_steps=config.optim.warmup_steps,
        ),
        momentum=config.optim.momentum,
        layer_rates=layer_rates,
    )
    state = create_state(variables, dropout_key, mesh, tx)
    del variables

    # ----- Checkpoints: resume where a previous run stopped --------------------------------
    manager = checkpoint.training_manager(
        os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep
    )
    restored = checkpoint.restore_training(manager, state, identity)
    if restored is not None:
        state, meta = restored
        train_iter.set_state(meta["data"])
        fresh_momentum = not meta.get(checkpoint.MOMENTUM_KEY, True)
        _say(
            f"resumed from step {int(state['step'])} of {manager.directory}"
            + (" (saved without momentum: it restarts from zero)" if fresh_momentum else "")
        )
    # A fresh state's step is 0: reading it would wait for the initialisation, which runs while
    # the training step is traced and its compiled program read from the cache.
    step = 0 if restored is None else int(state["step"])

    def save() -> None:
        meta = usage_lib.to_metadata(record, step=step, data=train_iter.get_state())
        checkpoint.save_training(
            manager, step, state, meta, momentum=config.checkpoint.optimizer_state
        )

    # ----- Steps ----------------------------------------------------------------------------
    train_step = make_train_step(
        model,
        mesh,
        tx,
        weight_decay=config.optim.weight_decay,
        l2_mask=config.optim.l2_mask,
        frozen_bn=frozen_bn,
    )
    if cache is not None and jax.process_count() == 1:  # and tracing it, read from the cache
        identity = {
            "config": config.to_dict(),
            "model": repr(model),
            "steps_per_epoch": steps_per_epoch,
            "layer_rates": layer_rates,
            "frozen_bn": frozen_bn,
        }
        train_step = step_cache.cached_train_step(train_step, mesh, cache, identity)
    eval_step = make_eval_step(model, mesh)
    # Only the "plateau" schedule reads the plateau rule's drops; the others ignore evaluations.
    record_evaluation = jax.jit(
        lambda opt_state, accuracy: optim.record_evaluation(
            opt_state,
            accuracy,
            patience=config.optim.patience,
            factor=config.optim.factor,
            max_drops=config.optim.max_drops if config.optim.schedule == "plateau" else 0,
            min_delta=config.optim.min_delta,
        ),
        out_shardings=replicated(mesh),
    )

    # ----- Evaluation -----------------------------------------------------------------------
    def evaluate() -> dict[str, float]:
        batches = data.eval_iterator(
            data_config, global_batch_size=config.eval_batch_size, mesh=mesh
        )
        if config.eval_batches:
            batches = itertools.islice(batches, config.eval_batches)
        return _evaluate(eval_step, state, batches)

    # ----- Loop -----------------------------------------------------------------------------
    stats_finite = jax.jit(
        lambda stats: (
            jnp.all(jnp.array([jnp.isfinite(x).all() for x in jax.tree.leaves(stats)]))
            if jax.tree.leaves(stats)
            else jnp.bool_(True)
        )
    )
    last_eval: dict[str, float] = {}
    images_per_s = math.nan
    first_step_s = None  # from `started` (after the imports) to the end of the first step
    with (
        _StopOnSigterm() as stop,
        tqdm(total=total_steps, initial=step, disable=jax.process_index() != 0, unit="step") as bar,
    ):
        tick, tick_step = time.perf_counter(), step
        while step < total_steps and not stop.requested:
            state, step_metrics = train_step(state, next(train_iter))
            # Reading the loss waits for the step: it keeps simulated devices in lockstep and
            # catches a diverging run before any checkpoint of it is written.
            step_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
            step += 1
            if first_step_s is None:
                first_step_s = time.perf_counter() - started
            lr = step_metrics["learning_rate"]
            # BatchNorm's running statistics can overflow while loss and parameters stay finite.
            params_finite = step_metrics.pop("params_finite") > 0 and bool(
                stats_finite(state["batch_stats"])
            )
            if not (math.isfinite(step_metrics["loss"]) and params_finite):
                raise NonFiniteLossError(
                    f"non-finite training at step {step}: loss {step_metrics['loss']}, "
                    f"parameters and BatchNorm statistics "
                    f"{'finite' if params_finite else 'not finite'} "
                    f"(learning rate {lr:g}); the last good checkpoint is step "
                    f"{manager.latest_step()} in {manager.directory}; lower the learning rate, "
                    "add warm-up steps or check the input data"
                )
            if step % config.log_every_steps == 0 or step == total_steps:
                now = time.perf_counter()
                images_per_s = (step - tick_step) * config.batch_size / (now - tick)
                tick, tick_step = now, step
                writer.write(step, {**step_metrics, "images_per_s": images_per_s}, kind="train")
            bar.set_postfix(metrics_lib.bar_fields(step_metrics, images_per_s), refresh=False)
            bar.update(1)
            if step % eval_every == 0 or step == total_steps:
                last_eval = evaluate()
                writer.write(step, last_eval, kind="eval")
                state["opt_state"] = record_evaluation(state["opt_state"], last_eval["accuracy"])
                bar.write(
                    f"step {step}: eval top-1 {last_eval['accuracy']:.4f} "
                    f"cross-entropy {last_eval['loss']:.4f}"
                )
                tick, tick_step = time.perf_counter(), step  # evaluation is not training
            if step % config.checkpoint.every_steps == 0:
                save()
                tick, tick_step = time.perf_counter(), step  # nor is saving
        save()  # at the end, or on SIGTERM
    manager.wait_until_finished()

    # ----- End of run: final weights, plot, summary -----------------------------------------
    drops = int(optim.plateau(state["opt_state"]).drops)
    if config.optim.schedule == "step":
        drops += optim.step_drops(max(step - 1, 0), step_every)
    previous = _read_summary(workdir)
    if not last_eval:  # a rerun of a finished workdir: keep the evaluation it already made
        last_eval = previous.get("eval") or {}
        if not math.isfinite(images_per_s) and previous.get("images_per_s") is not None:
            images_per_s = previous["images_per_s"]
    summary = {
        "step": step,
        "total_steps": total_steps,
        "epochs": step / steps_per_epoch,
        "stopped_by_sigterm": step < total_steps,
        "learning_rate_drops": drops,
        "final_learning_rate": float(optim.learning_rate(state["opt_state"])),
        "eval": last_eval,
        "images_per_s": images_per_s,
        "wall_s": time.perf_counter() - started,
        "first_step_s": first_step_s,
        "workdir": os.path.abspath(workdir),
    }
    try:
        if step >= total_steps:
            export = os.path.join(workdir, "model")
            if jax.process_index() == 0:
                shutil.rmtree(export, ignore_errors=True)
            if jax.process_count() > 1:  # every host takes part in an Orbax save
                multihost_utils.sync_global_devices("vgg_flax export")
            loader.save(
                export,
                model,
                jax.device_get(model_variables(state)),
                record,  # what using this model must feed it
                step=step,
            )
    finally:  # the summary is kept even when the export or the plot fails
        if step >= total_steps and jax.process_index() == 0:
            _write_summary(workdir, summary)
            if os.path.exists(writer.path):
                metrics_lib.plot(writer.path, os.path.join(workdir, metrics_lib.PLOT_FILE))
        writer.close()
    return summary


def _split_seed(seed: int) -> tuple[jax.Array, jax.Array]:
    """`jax.random.split(jax.random.key(seed))`'s two keys, made by one compiled program.

    Run eagerly, its four operations (staging the seed, seeding, splitting, unstacking) are four
    programs, each traced, lowered and read from the compilation cache on every start.
    """
    return jax.jit(lambda: tuple(jax.random.split(jax.random.key(seed))))()


def usage(model: Any, data_config: Any, class_names: Any = None) -> usage_lib.Usage:
    """The usage record of a run's model, written into its checkpoints and its model/.

    The input preprocessing the run trained with, with its numbers (for "mean_rgb", the mean
    itself), the run's test resize Q and crop (the input size), its training scale S, whether
    it flipped images, the class names when the dataset has them, and the protocol its
    evaluations use ("center": the pipeline's resize to `eval_scale` and centre crop), so that
    `experiments.evaluate` on the run's model/ scores what the run reported by default.
    """
    from vgg_flax.data.config import preprocessing_for, train_scale

    scale = train_scale(data_config)
    names = tuple(str(name) for name in class_names) if class_names else None
    return usage_lib.Usage(
        architecture(model),
        preprocessing_for(data_config),
        names,
        train_scale=scale,
        train_flip=bool(data_config.flip),
        eval_protocol="center",
    )


def _read_summary(workdir: str) -> dict[str, Any]:
    """An earlier run's summary.json in `workdir`, or {} when there is none readable."""
    try:
        with open(os.path.join(workdir, "summary.json")) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def _write_summary(workdir: str, summary: Mapping[str, Any]) -> None:
    """summary.json as strict JSON (NaN/inf become null), written atomically."""
    clean = jax.tree.map(
        lambda x: None if isinstance(x, float) and not math.isfinite(x) else x, dict(summary)
    )
    with atomic_write(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(clean, f, indent=2, allow_nan=False)


def start_from(
    variables: dict[str, Any],
    target_arch: Any,
    path: str,
    skip: tuple[str, ...] = (),
    preprocessing: Any = None,
) -> dict[str, Any]:
    """`variables` with layers copied from the weights at `path` (`vgg_flax.load`; see init.py).

    A classifier for another number of classes starts afresh, said in the line that names the
    copied layers (`init.with_fresh_head`); `skip` names more target layers not to copy.

    `preprocessing` (this run's `Preset`) is checked against the one the weights record: a
    warm start from weights trained on other inputs (another mean, channel order or scale)
    starts from features that do not fit, so it is said.
    """
    source_model, source, source_usage = finetune.load_weights(path)  # pretrained names too
    theirs = source_usage.preprocessing
    if preprocessing is not None and _values(theirs) != _values(preprocessing):
        _say(
            f"warning: {path} was trained with {theirs.name} preprocessing {_values(theirs)}, "
            f"this run feeds {preprocessing.name} {_values(preprocessing)}"
        )
    mapping = warm_start_layers(source_model.arch, target_arch)
    mapping = {src: dst for src, dst in mapping.items() if dst not in skip}
    mapping, note = with_fresh_head(mapping, source, variables)
    started = copy_layers(variables, source, mapping)  # refuses a mismatch before saying anything
    label = arch_label(source_model.arch)
    copied = f"copied {', '.join(mapping.values())} from the {label} net at {path}"
    _say(f"{copied}; {note}" if note else copied)
    return started


def _values(preset: Any) -> tuple[Any, ...]:
    """What a preset does to pixel values (not its geometry, which may change between runs)."""
    return (preset.channel_order, preset.value_range, preset.mean, preset.std)


def _say(message: str) -> None:
    if jax.process_index() == 0:
        print(message, flush=True)


def _evaluate(eval_step: Any, state: Any, batches: Iterator[Mapping[str, Any]]) -> dict[str, float]:
    """Top-1/top-5 accuracy and mean loss over every (unmasked) example of `batches`."""
    sums: dict[str, float] = {}
    for batch in batches:
        out = jax.device_get(eval_step(state, batch))
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(np.asarray(value))
    count = max(sums.get("count", 0.0), 1.0)
    return {
        "accuracy": sums.get("correct", 0.0) / count,
        "top5": sums.get("correct_top5", 0.0) / count,
        "loss": sums.get("loss", 0.0) / count,
        "examples": sums.get("count", 0.0),
    }

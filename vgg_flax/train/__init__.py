"""Training: the paper's schedule in an Optax loop, data-parallel over a mesh, Orbax checkpoints.

Modules: `optim` (SGD, L2 term, learning-rate schedules), `init` (initialisation and warm
starts), `step` (the jitted train and eval steps), `metrics` (progress bar, TensorBoard, JSON
lines, plot), `trainer` (the loop, `train(config, workdir)`) and `base_config` (the paper's
recipe as the config every experiment starts from).
"""

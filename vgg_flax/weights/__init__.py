"""Weights: the registry of published files, downloads, checkpoints, and `load`/`save`, which
return a model, its variables and the usage record that says how to feed them.
"""

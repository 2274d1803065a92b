"""Runnable experiments: `python -m experiments.train --config experiments/configs/<row>.py`."""

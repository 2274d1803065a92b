"""What every weight download shares: its error and how long it waits for a stalled server.

Both downloaders use these: `vgg_flax.weights.download` (torchvision's and Keras' servers) and
`vgg_flax.weights.hub` (the Hugging Face hub).
"""

from __future__ import annotations

import os

# Seconds a download may wait to connect or for its next bytes ($VGG_FLAX_DOWNLOAD_TIMEOUT).
DEFAULT_TIMEOUT_S = 30.0


class DownloadError(OSError):
    """A download failed (unreachable, stalled, too large, cut short); nothing was cached."""


def download_timeout() -> float:
    """Seconds a download waits to connect or for more bytes: $VGG_FLAX_DOWNLOAD_TIMEOUT or 30."""
    text = os.environ.get("VGG_FLAX_DOWNLOAD_TIMEOUT")
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"VGG_FLAX_DOWNLOAD_TIMEOUT={text!r}: give a positive number of seconds")
    return value

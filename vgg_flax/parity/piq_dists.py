"""`piq.DISTS` built offline around a given torchvision vgg16 (a reference for vgg-flax's DISTS).

piq's constructor builds torchvision's pretrained vgg16 and downloads DISTS's alpha/beta; here it
gets a copy of `vgg` instead, and the installed alpha/beta file divided by the sum of its values
(the form piq downloads; the authors' code divides at run time).
"""

from __future__ import annotations

import copy
from typing import Any
from unittest import mock


def offline_piq_dists(vgg: Any) -> Any:
    """`piq.DISTS(reduction="none")` on a copy of torchvision vgg16 `vgg`, with no download."""
    import piq
    import piq.perceptual
    import torch

    from vgg_flax.perceptual.dists_weights import find_weights

    weights = torch.load(find_weights(), map_location="cpu")
    total = weights["alpha"].sum() + weights["beta"].sum()
    summed_to_one = {key: value / total for key, value in weights.items()}
    with (
        mock.patch.object(piq.perceptual, "vgg16", lambda *a, **k: copy.deepcopy(vgg)),
        mock.patch.object(torch.hub, "load_state_dict_from_url", lambda *a, **k: summed_to_one),
    ):
        return piq.DISTS(reduction="none")

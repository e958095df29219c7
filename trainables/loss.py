"""CLIP contrastive loss over the GLOBAL batch, and the learnable logit scale.

Why ``gather_with_grad=True``
-----------------------------
Every rank gathers all ranks' features (``local_loss=False``) and computes the full
global loss L over the B x B similarity matrix (B = global batch). With
``gather_with_grad=True`` the gather is ``torch.distributed.nn.all_gather``, whose
backward SUMS the feature gradients of all ranks: each rank computes the same L, so
rank k's local features receive ``world_size * dL/df_k``. DDP then AVERAGES parameter
gradients over the ranks: ``(1/W) * sum_k W * dL/df_k * df_k/dtheta = dL/dtheta`` -
exactly the single-process gradient of the global batch. The logit scale is not
gathered: every rank gets the full ``dL/ds`` and the average is again exact.
Conclusion: with DDP's default averaging, NO extra loss or gradient scaling is needed
(tests/test_loss_ddp.py checks this to 1e-5).

With ``gather_with_grad=False`` the other ranks' features are detached copies, so
rank k only back-propagates ``dL/df_k`` once and the DDP average shrinks the tower
gradients by 1/W while the logit-scale gradient stays full size: the update direction
of the whole model is wrong (the test keeps this as a negative control).
"""

from __future__ import annotations

import math

import torch
from open_clip.loss import ClipLoss
from torch import nn

#: open_clip clamps the logit scale at 100 (i.e. temperature >= 0.01).
MAX_LOGIT_SCALE = 100.0


def make_clip_loss(rank: int = 0, world_size: int = 1) -> ClipLoss:
    """The symmetric CLIP loss with features gathered (with gradient) across ranks.

    Call as ``loss(image_features, text_features, logit_scale)``:
        image_features, text_features: [b, D] L2-normalised features of this rank's
            slice (row i of both belongs to the same sample; b = global batch / world_size).
        logit_scale: scalar tensor, already exponentiated (``exp(param)``, i.e. 1/tau).
    Returns a scalar: mean of image->text and text->image cross entropies over the
    GLOBAL batch (identical on all ranks). All ranks must call it every step
    (it runs an all_gather collective when ``world_size > 1``).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: need world_size >= 1 and 0 <= rank < world_size")
    return ClipLoss(local_loss=False, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)


def set_logit_scale_(param: nn.Parameter, temperature: float, learnable: bool = True) -> nn.Parameter:
    """Set a logit-scale parameter (e.g. ``model.logit_scale``, open_clip's ``log(1/temperature)``) in
    place, clamped to ``log(MAX_LOGIT_SCALE)``; ``learnable=False`` freezes it. ``temperature`` is a
    validated ``TrialConfig.temperature`` (positive, finite)."""
    with torch.no_grad():
        param.fill_(min(math.log(1.0 / temperature), math.log(MAX_LOGIT_SCALE)))
    param.requires_grad_(learnable)
    return param


def clamp_logit_scale_(param: torch.Tensor) -> None:
    """Clamp the log logit scale to [0, log(100)] in place; call after each optimizer step."""
    with torch.no_grad():
        param.clamp_(0.0, math.log(MAX_LOGIT_SCALE))


__all__ = ["make_clip_loss", "set_logit_scale_", "clamp_logit_scale_", "MAX_LOGIT_SCALE"]

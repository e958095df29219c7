"""The CLIP loss under DDP equals the single-process loss on the global batch.

Two gloo workers (spawned) each encode their half of a fixed global batch with a tiny
two-tower linear model wrapped in DistributedDataParallel. After backward (DDP averages
gradients over ranks) the parameter gradients must equal those of one process on the
whole batch, with no extra scaling (see trainables/loss.py). The negative control
(gather_with_grad=False) must differ, proving the comparison can fail.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from open_clip.loss import ClipLoss
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainables.loss import MAX_LOGIT_SCALE, clamp_logit_scale_, make_clip_loss, set_logit_scale_

GLOBAL_BATCH, WORLD, IMG_DIM, TXT_DIM, EMBED = 8, 2, 6, 5, 4


class TwoTower(nn.Module):
    """Linear image/text towers + logit scale; features are L2-normalised [b, EMBED]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1234)  # identical init in every process
        self.image = nn.Linear(IMG_DIM, EMBED)
        self.text = nn.Linear(TXT_DIM, EMBED)
        self.logit_scale = set_logit_scale_(nn.Parameter(torch.zeros([])), 0.5)  # moderate: gradients of all parts matter

    def forward(self, images: torch.Tensor, texts: torch.Tensor):
        return F.normalize(self.image(images), dim=-1), F.normalize(self.text(texts), dim=-1), self.logit_scale.exp()


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed global batch: images [B, IMG_DIM], texts [B, TXT_DIM]."""
    gen = torch.Generator().manual_seed(42)
    return torch.randn(GLOBAL_BATCH, IMG_DIM, generator=gen), torch.randn(GLOBAL_BATCH, TXT_DIM, generator=gen)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def _worker(rank: int, world: int, store: str, out: str) -> None:
    """One DDP rank: loss and averaged gradients for gather_with_grad True and False."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        images, texts = _inputs()
        b = GLOBAL_BATCH // world
        results = {}
        for with_grad in (True, False):
            model = DistributedDataParallel(TwoTower())
            loss_fn = make_clip_loss(rank, world) if with_grad else ClipLoss(
                local_loss=False, gather_with_grad=False, rank=rank, world_size=world)
            loss = loss_fn(*model(images[rank * b:(rank + 1) * b], texts[rank * b:(rank + 1) * b]))
            loss.backward()
            results[with_grad] = {"loss": loss.item(), "grads": _grads(model.module)}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "rank0.pt"
    mp.spawn(_worker, args=(WORLD, str(tmp / "store"), str(out)), nprocs=WORLD, join=True)
    return torch.load(out)


@pytest.fixture(scope="module")
def reference():
    model = TwoTower()
    loss = make_clip_loss()(*model(*_inputs()))
    loss.backward()
    return {"loss": loss.item(), "grads": _grads(model)}


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.flatten() for _, g in sorted(grads.items())])


@pytest.mark.slow
def test_ddp_gradient_equals_single_process(ddp_results, reference):
    got = ddp_results[True]
    assert got["loss"] == pytest.approx(reference["loss"], abs=1e-6)
    for name, grad in reference["grads"].items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(got["grads"][name], grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.slow
def test_negative_control_gather_without_grad_differs(ddp_results, reference):
    got = ddp_results[False]
    assert got["loss"] == pytest.approx(reference["loss"], abs=1e-6)  # forward is the same ...
    diff = (_flat(got["grads"]) - _flat(reference["grads"])).abs().max()
    assert diff > 1e-3  # ... the gradients are not: towers get 1/W of theirs
    torch.testing.assert_close(got["grads"]["image.weight"], reference["grads"]["image.weight"] / WORLD)


def test_single_process_loss_matches_formula():
    img = F.normalize(torch.arange(12.0).view(3, 4).sin(), dim=-1)
    txt = F.normalize(torch.arange(12.0).view(3, 4).cos(), dim=-1)
    scale = torch.tensor(10.0)
    logits = scale * img @ txt.T
    labels = torch.arange(3)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(make_clip_loss(0, 1)(img, txt, scale), expected)


def test_logit_scale_helpers():
    param = set_logit_scale_(nn.Parameter(torch.zeros([])), 0.07)
    assert param.requires_grad and param.shape == torch.Size([])
    assert param.exp().item() == pytest.approx(1 / 0.07)
    assert not set_logit_scale_(nn.Parameter(torch.zeros([])), 0.07, learnable=False).requires_grad
    assert set_logit_scale_(nn.Parameter(torch.zeros([])), 0.001).exp().item() == pytest.approx(MAX_LOGIT_SCALE)
    with torch.no_grad():
        param.fill_(10.0)
    clamp_logit_scale_(param)
    assert param.item() == pytest.approx(math.log(MAX_LOGIT_SCALE))
    set_logit_scale_(param, 1.0, learnable=False)
    assert param.item() == 0.0 and not param.requires_grad
    with pytest.raises(ValueError, match="rank"):
        make_clip_loss(2, 2)

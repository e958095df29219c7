"""A lower bound on the memory one training worker of a trial needs, before anything is built.

What it counts, per worker, in bytes (each a floor: real use is higher):

* **data**: the decoded images held in RAM, ``uint8 [N, 3, S, S]`` for the training split
  (``synthetic_train_size`` images of the synthetic data; real data is counted by the trial)
  and for the test split (``synthetic_test_size``), S = ``image_size``.
* **evaluation**: the embeddings of the test split, ``float32 [N_test * (1 + L), D]`` (an
  image and L captions per test image, D = the model's ``embed_dim``), plus one block of
  scores of the multilingual pool, ``float32`` of at most :data:`DEFAULT_CHUNK_ELEMENTS`
  (the evaluator scores in blocks of that size) or of the whole ``[N_test * L, N_test * L]``
  when that is smaller.
* **model**: the weights, their gradients and AdamW's two moments (4 x float32 per
  parameter) of the transformer layers of both towers (:func:`counted_parameters`: 12 W^2 a
  layer, from open_clip's config of the model; a tower it describes otherwise, timm or
  Hugging Face, counts as zero), and the activations a backward pass keeps for one local
  batch: per vision layer ``B * T * W`` floats for its input and the attention scores
  ``B * H * T * T``, with ``T = (S / patch)^2 + 1`` tokens and ``B = batch_size / num_workers``.

The bound is meant to catch settings that cannot fit at all (an ``image_size`` of 100000,
a test split of 10^8 images), not to predict use: it leaves out the framework's own
memory, the data loader's copies and the text activations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

from trainables.languages import LANGUAGES

FLOAT = 4  # bytes of a float32
# Elements of one [chunk, N] score block of the evaluator when no chunk size is given (~64 MiB of
# float32): a memory budget, kept here (torch-free, so the CLI's size check costs no torch import)
# and used by trainables.metrics.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each counted part, for one worker (see the module docstring)."""

    data: int
    evaluation: int
    model: int

    @property
    def total(self) -> int:
        return self.data + self.evaluation + self.model

    def describe(self) -> str:
        """``12.3 GiB (data 10.0 GiB, evaluation 0.3 GiB, model 2.0 GiB)``."""
        return (f"{gib(self.total)} (data {gib(self.data)}, evaluation {gib(self.evaluation)}, "
                f"model {gib(self.model)})")


def machine_memory() -> Optional[int]:
    """This machine's physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def gib(n_bytes: float) -> str:
    """``n_bytes`` for messages: in GiB, or TiB ... EiB when larger (``12.3 GiB``, ``5.2 PiB``)."""
    value, unit = n_bytes / 2**30, "GiB"
    for bigger in ("TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}" if value < 1e5 else f"{value:.1e} {unit}"


def counted_parameters(model_cfg: Mapping) -> int:
    """The parameters the estimate counts: 12 W^2 per transformer layer of each tower open_clip's
    config describes (attention 4 W^2, MLP 8 W^2), leaving out embeddings, norms and biases, whose
    size depends on the tokenizer and the patching."""
    total = 0
    for tower in ("vision_cfg", "text_cfg"):
        cfg = model_cfg.get(tower) or {}
        width, layers = cfg.get("width"), cfg.get("layers")
        if isinstance(width, int) and isinstance(layers, int):
            total += layers * 12 * width * width
    return total


def estimate_worker_memory(config, model_cfg: Mapping, synthetic: bool) -> MemoryEstimate:
    """The lower bound of the module docstring for one worker of ``config`` (a TrialConfig).

    ``model_cfg``: open_clip's config of the model (``{}`` when unknown); ``synthetic``: whether
    the training split is the synthetic one, whose size ``config`` states.
    """
    side, n_test = int(config.image_size), int(config.synthetic_test_size)
    image_bytes = 3 * side * side
    data = image_bytes * ((int(config.synthetic_train_size) if synthetic else 0) + n_test)

    embed = int(model_cfg.get("embed_dim") or 0)
    pool = n_test * len(LANGUAGES)
    # every test caption is embedded, whatever the training languages
    evaluation = FLOAT * (n_test * (1 + len(LANGUAGES)) * embed + min(pool * pool, DEFAULT_CHUNK_ELEMENTS))

    vision = model_cfg.get("vision_cfg") or {}
    activations = 0
    patch, width, layers = vision.get("patch_size"), vision.get("width"), vision.get("layers")
    if isinstance(patch, int) and isinstance(width, int) and isinstance(layers, int) and patch > 0:
        tokens = (side // patch) ** 2 + 1
        heads = max(1, width // int(vision.get("head_width") or 64))
        batch = max(1, int(config.batch_size) // max(1, int(config.num_workers)))
        activations = layers * batch * tokens * (width + heads * tokens) * FLOAT
    model = 4 * FLOAT * counted_parameters(model_cfg) + activations
    return MemoryEstimate(data=data, evaluation=evaluation, model=model)

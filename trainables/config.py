"""The one typed, validated, frozen configuration of a trial.

Every part of a trial (data, composer, model, loss, loop, evaluation) receives a
:class:`TrialConfig` explicitly. It is flat on purpose: a search space samples
top-level fields by name, MLflow logs each field as a param, and a checkpoint
stores it as a plain dict (:meth:`TrialConfig.to_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any, Optional

from trainables.languages import LANGUAGES, canonical_language


class ConfigError(ValueError):
    """A trial config value is invalid. The message names the field and the problem."""


COMPOSER_MODES = ("per_batch", "within_batch")
LANGUAGE_WEIGHTINGS = ("uniform", "size")
MISSING_CAPTION_POLICIES = ("redraw", "error")
PRECISIONS = ("auto", "fp32", "bf16")
UNREADABLE_IMAGE_POLICIES = ("skip", "error")
TRAIN_LOADINGS = ("memory", "stream")
TOKENIZERS = ("auto", "corpus", "openclip_bpe")
MAX_SEED = 2**32 - 1  # numpy's and Optuna's seeds are 32-bit; torch takes these too


def is_seed(value: Any) -> bool:
    """The one seed rule (a trial's seed, ``--seed``, a space's seeds): an integer in [0, 2**32 - 1]."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


@dataclass(frozen=True)
class TrialConfig:
    """All settings of one trial.

    Composition (the study's subject):
        ratio: share of monolingual data in [0, 1].
        mode: ``per_batch`` (a whole global step is monolingual with probability
            ``ratio``) or ``within_batch`` (each global batch holds exactly
            ``round(ratio * batch_size)`` monolingual items).
        language_weighting: ``uniform`` or ``size`` (proportional to caption counts).
        train_languages: languages the composer may draw; others stay zero-shot.
        missing_caption_policy: ``redraw`` (draw again among the sample's own
            languages, counted) or ``error``.
    Optimisation:
        batch_size: GLOBAL batch size, split evenly over ``num_workers``.
        temperature: initial softmax temperature tau (logit scale = 1/tau).
        learn_temperature: whether the logit scale is trained.
    Model:
        model: ``tiny`` (offline random-init CLIP) or any open_clip model name.
        tokenizer: ``auto`` (the tiny model: ``corpus``; others: the model's own), ``corpus``
            (BPE trained on the training captions, languages balanced; trainables.tokenizer)
            or ``openclip_bpe`` (open_clip's English-centric BPE). Tiny models only.
        tokenizer_vocab: vocabulary size the corpus tokenizer is trained to (at most; 2000 suits the
            synthetic captions, a real corpus needs more, e.g. 16000).
        context_length: text tokens per caption; None: just above the longest training caption
            (``corpus``) or 77 (``openclip_bpe``).
        pretrained: open_clip pretrained tag, or a local checkpoint path.
        hf_text_model: HF text tower (local folder or hub name) on ``model``'s vision tower.
    Evaluation:
        eval_every: evaluate after every this-many epochs, and always after the last.
        intermediate_eval_images: how many test images the evaluations before the last epoch use:
            the first this-many of the split, in its order (the same images every time and in
            every trial), or all of them when the split is smaller or the value is None. They
            report the same metric names as the final evaluation (the learning curve), but over
            a smaller pool, where retrieval is easier: compare an epoch's value with the same
            epoch of other trials, not with the final one. The final evaluation (after the last
            epoch: the study's objective and its per-query arrays) always uses the whole split.
    Data:
        train_data: ``synthetic``, a JSONL manifest, or WebDataset shards (glob/brace).
        eval_data: ``synthetic`` or an XTD-layout folder.
        train_loading: ``memory`` (decoded into RAM) or ``stream`` (shards read per rank).
    """

    # --- composition -------------------------------------------------------
    ratio: float = 0.5
    mode: str = "per_batch"
    language_weighting: str = "uniform"
    train_languages: tuple[str, ...] = LANGUAGES
    missing_caption_policy: str = "redraw"
    # --- optimisation ------------------------------------------------------
    # The default point: 5 x 100 steps of batch 64 at lr 1e-3 after 250 warm-up steps (half the
    # run; cosine decay after), temperature 0.07. Among the recipes measured by benchmarks/noise.py
    # that learn, it resolves the ratio's effect most precisely per minute of a 10-minute study on
    # 2 cores (benchmarks/README.md §9: 8 paired seeds, against 100 warm-up steps the same day).
    batch_size: int = 64
    epochs: int = 5
    steps_per_epoch: Optional[int] = 100  # None: one pass over the train split
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 250
    temperature: float = 0.07
    learn_temperature: bool = True
    grad_clip: float = 1.0
    seed: int = 0
    # --- model -------------------------------------------------------------
    model: str = "tiny"
    pretrained: Optional[str] = None
    tokenizer: str = "auto"
    tokenizer_vocab: int = 2000
    context_length: Optional[int] = None
    lock_image: bool = False
    lock_text_layers: int = 0
    grad_checkpointing: bool = False
    precision: str = "auto"
    # --- data --------------------------------------------------------------
    train_data: str = "synthetic"
    eval_data: str = "synthetic"
    images_dir: Optional[str] = None
    allow_missing_images: bool = False
    unreadable_image_policy: str = "skip"
    data_cache: Optional[str] = None  # None: ~/.cache/mlclip-study
    synthetic_train_size: int = 4000
    synthetic_test_size: int = 500
    image_size: int = 32
    data_seed: int = 0
    loader_workers: int = 0  # DataLoader processes decoding a streamed train split
    # "memory": the train split decoded into RAM, epochs planned globally (trainables.composer);
    # "stream": WebDataset shards read as a stream per rank, composed per step (trainables.stream)
    train_loading: str = "memory"
    # --- real-scale model ---------------------------------------------------
    # HF text tower (a local HF model folder with config + tokenizer, or a hub name) on the
    # vision tower and embed_dim of ``model``, built as open_clip's CustomTextCLIP. The text
    # tower starts from random weights (pretrained_text=False); see trainables.model.
    hf_text_model: Optional[str] = None
    # --- evaluation --------------------------------------------------------
    eval_k: int = 100
    eval_every: int = 2  # epochs (and always the last): the default evaluates after 200, 400 and 500 steps
    # The evaluations before the last epoch rank the first this-many test images only (the learning
    # curve; the final evaluation, which the study's answer uses, ranks them all): 150 of the default
    # 500 cost ~0.8 CPU-s against ~4 for the whole split (benchmarks/README.md §4).
    intermediate_eval_images: Optional[int] = 150
    progress_every_s: float = 10.0  # seconds between a worker's progress lines (0: none)
    # --- distribution ------------------------------------------------------
    num_workers: int = 1
    use_gpu: bool = False

    def __post_init__(self) -> None:
        # Normalise sequences/codes so equal configs compare equal.
        raw = self.train_languages
        if isinstance(raw, str):
            langs = tuple(x for x in raw.replace(" ", "").split(",") if x)
        elif isinstance(raw, (list, tuple)) and all(isinstance(x, str) for x in raw):
            langs = tuple(raw)
        else:  # e.g. --set train_languages={0} (a YAML mapping) or a list holding a number
            raise ConfigError(f"train_languages={raw!r}: expected language codes, as a list or a comma-separated string")
        try:
            langs = tuple(dict.fromkeys(canonical_language(x) for x in langs))
        except ValueError as err:
            raise ConfigError(f"train_languages: {err}") from None
        object.__setattr__(self, "train_languages", langs)
        self._validate()

    # ------------------------------------------------------------------
    def _validate(self) -> None:
        def bad(name: str, why: str) -> None:
            raise ConfigError(f"{name}={getattr(self, name)!r}: {why}")

        if _not_number(self.ratio) or not (0.0 <= float(self.ratio) <= 1.0) or math.isnan(self.ratio):
            bad("ratio", "the monolingual ratio must lie in [0, 1]")
        _choice(self, "mode", COMPOSER_MODES)
        _choice(self, "language_weighting", LANGUAGE_WEIGHTINGS)
        _choice(self, "missing_caption_policy", MISSING_CAPTION_POLICIES)
        _choice(self, "precision", PRECISIONS)
        _choice(self, "unreadable_image_policy", UNREADABLE_IMAGE_POLICIES)
        _choice(self, "train_loading", TRAIN_LOADINGS)
        _choice(self, "tokenizer", TOKENIZERS)
        for f in fields(self):  # a YAML value of another kind (--set model=3, lock_image=1.5) stops here
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                bad(f.name, "must be true or false")
            if f.type in ("str", "Optional[str]") and not isinstance(value, str) and (value is not None or f.type == "str"):
                bad(f.name, "must be a string" if f.type == "str" else "must be a string or None")
            if isinstance(value, str) and "\x00" in value:  # no name or path holds one (YAML's "\0")
                bad(f.name, "holds a NUL character")
        if self.tokenizer != "auto" and (not self.is_tiny or self.hf_text_model):
            bad("tokenizer", f"only the offline tiny model's text tower is sized to a chosen tokenizer; "
                f"model={self.model!r} uses its own (leave tokenizer=auto)")
        if self.tokenizer == "corpus" and self.train_loading == "stream":
            bad("tokenizer", "the corpus tokenizer is trained on the captions before training starts, "
                "which a stream does not have; use tokenizer=openclip_bpe with train_loading=stream")
        if _not_int(self.tokenizer_vocab) or self.tokenizer_vocab < 64:
            bad("tokenizer_vocab", "must be an integer >= 64")
        if self.context_length is not None and (_not_int(self.context_length) or self.context_length < 2):
            bad("context_length", "must be an integer >= 2 (start and end token) or None")
        if self.train_loading == "stream":
            if self.train_data == "synthetic" or str(self.train_data).endswith(".jsonl"):
                bad("train_loading", "streaming reads WebDataset shards; train_data is not a shard spec")
            if self.language_weighting != "uniform":
                bad("language_weighting", "a streamed split has no caption counts before it is read; use uniform")
        if not self.train_languages:
            bad("train_languages", "at least one training language is needed")
        for name in ("batch_size", "epochs", "num_workers", "eval_k", "eval_every", "image_size",
                     "synthetic_train_size", "synthetic_test_size"):
            if _not_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "must be a positive integer")
        for name in ("warmup_steps", "lock_text_layers", "loader_workers"):
            if _not_int(getattr(self, name)) or getattr(self, name) < 0:
                bad(name, "must be a non-negative integer")
        for name in ("seed", "data_seed"):
            if not is_seed(getattr(self, name)):
                bad(name, "must be an integer in [0, 2**32 - 1]")
        if self.steps_per_epoch is not None and (_not_int(self.steps_per_epoch) or self.steps_per_epoch < 1):
            bad("steps_per_epoch", "must be a positive integer or None")
        if self.intermediate_eval_images is not None and (
                _not_int(self.intermediate_eval_images) or self.intermediate_eval_images < 1):
            bad("intermediate_eval_images", "must be a positive integer (test images) or None (all of them)")
        if self.batch_size < self.num_workers or self.batch_size % self.num_workers:
            raise ConfigError(
                f"batch_size={self.batch_size} must be at least num_workers={self.num_workers} and divisible by it "
                "(it is the global batch, split evenly over the workers)"
            )
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if _not_number(value) or not math.isfinite(value) or value <= 0:
                bad(name, "must be a positive finite number")
        for name in ("weight_decay", "grad_clip", "progress_every_s"):
            value = getattr(self, name)
            if _not_number(value) or not math.isfinite(value) or value < 0:
                bad(name, "must be a non-negative finite number")
        if self.model == "tiny" and self.pretrained:
            bad("pretrained", "the offline 'tiny' model has no pretrained weights")
        hf_text = self.hf_text_model
        if hf_text is not None and (not isinstance(hf_text, str) or not hf_text.strip()):
            bad("hf_text_model", "must be a local HF model folder or a hub name")
        if self.hf_text_model and self.pretrained and self.pretrained in _pretrained_tags(self.model):
            bad("pretrained", "a pretrained tag loads a whole CLIP of the named model and does not fit an "
                "hf_text_model tower; give a local checkpoint of this combination instead")

    # ------------------------------------------------------------------
    @property
    def is_tiny(self) -> bool:
        """The offline random-init model (``tiny``, or a registered ``mlclip-tiny*`` variant)."""
        return self.model == "tiny" or str(self.model).startswith("mlclip-tiny")

    @property
    def text_tokenizer(self) -> str:
        """The tokenizer in use: ``corpus``, ``openclip_bpe`` or ``model`` (the named model's own)."""
        if self.tokenizer != "auto":
            return self.tokenizer
        if not self.is_tiny or self.hf_text_model:  # an HF text tower brings its own tokenizer
            return "model"
        return "openclip_bpe" if self.train_loading == "stream" else "corpus"

    @property
    def local_batch_size(self) -> int:
        """Per-worker batch: the global batch split evenly over the workers."""
        return self.batch_size // self.num_workers

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (lists for tuples): JSON/YAML/checkpoint safe."""
        out = dataclasses.asdict(self)
        out["train_languages"] = list(self.train_languages)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrialConfig":
        """Build from a dict, rejecting unknown keys with one clear error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown trial config field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        coerced = dict(values)
        if "train_languages" in coerced and isinstance(coerced["train_languages"], list):
            coerced["train_languages"] = tuple(coerced["train_languages"])
        try:
            return cls(**coerced)
        except TypeError as err:  # pragma: no cover - defensive
            raise ConfigError(str(err)) from None

    def replace(self, **changes: Any) -> "TrialConfig":
        """A validated copy with ``changes`` applied."""
        return TrialConfig.from_dict({**self.to_dict(), **changes})


# One line per field: what it means (``python -m study.run --list-fields`` prints these).
FIELD_DOCS: dict[str, str] = {
    "ratio": "share of monolingual data in [0, 1] (the study's subject)",
    "mode": "per_batch: a whole global step is monolingual with probability ratio; within_batch: "
            "exactly round(ratio * batch_size) monolingual items per global batch",
    "language_weighting": "uniform over the train languages, or size: proportional to their caption counts",
    "train_languages": "languages the composer may draw (comma-separated); the others stay zero-shot",
    "missing_caption_policy": "redraw: a sample without the drawn language gets one of its own (counted); error: fail",
    "batch_size": "GLOBAL batch size, split evenly over num_workers",
    "epochs": "epochs per trial",
    "steps_per_epoch": "global steps per epoch (None: one pass over the train split)",
    "lr": "AdamW peak learning rate (linear warm-up, then cosine decay to 0)",
    "weight_decay": "AdamW weight decay (not on gains, biases or the logit scale)",
    "warmup_steps": "steps of linear learning-rate warm-up",
    "temperature": "initial softmax temperature tau (logit scale 1/tau, capped at 100)",
    "learn_temperature": "whether the logit scale is trained",
    "grad_clip": "gradient-norm clip (0: off)",
    "seed": "seed of the model init and the batch composition",
    "model": "tiny (offline random-init CLIP) or an open_clip model name",
    "pretrained": "open_clip pretrained tag or a local checkpoint file (not for tiny)",
    "tokenizer": "auto (tiny: corpus; others: the model's own), corpus (BPE trained on the training "
                 "captions, languages balanced) or openclip_bpe (open_clip's English BPE); tiny only",
    "tokenizer_vocab": "vocabulary the corpus tokenizer is trained to (at most); a real corpus needs ~16000",
    "context_length": "text tokens per caption (None: just above the longest training caption; 77 for openclip_bpe)",
    "lock_image": "freeze the image tower (LiT-style)",
    "lock_text_layers": "freeze the token embeddings and this many lowest text layers",
    "grad_checkpointing": "trade compute for memory in both towers",
    "precision": "auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16",
    "train_data": "synthetic, a JSONL manifest, or WebDataset shards (a .tar, brace pattern, glob or folder)",
    "eval_data": "synthetic, or an XTD-layout folder (captions per language + image names)",
    "images_dir": "folder of the images the train/eval data reference (default: beside the data)",
    "allow_missing_images": "evaluate on the XTD images present instead of failing on missing ones",
    "unreadable_image_policy": "skip (counted) or error on an image that does not decode",
    "data_cache": "folder of generated data, tokenizers and tokenised sets (None: ~/.cache/mlclip-study)",
    "synthetic_train_size": "synthetic training images",
    "synthetic_test_size": "synthetic test images (the XTD-layout evaluation split)",
    "image_size": "image side in pixels the data is decoded to",
    "data_seed": "seed of the synthetic data generator",
    "loader_workers": "DataLoader processes decoding a streamed train split",
    "train_loading": "memory (decoded into RAM, epochs planned globally) or stream (shards read per rank)",
    "hf_text_model": "an HF text tower (local folder or hub name) on the vision tower of model, random init",
    "eval_k": "cut-off k of AP@k and the pools' top-k",
    "eval_every": "evaluate every this many epochs (and always after the last)",
    "intermediate_eval_images": "test images (the first N of the split) the evaluations before the last epoch "
                                "use (None: all); the last one always uses the whole split",
    "progress_every_s": "seconds between the progress lines a Ray worker prints inside an epoch (0: none)",
    "num_workers": "Ray Train (DDP) workers of the trial",
    "use_gpu": "train on one GPU per worker",
}


# Fields a resumed trial may change: where the cache lives (its entries are keyed by content) and how
# the work is spread, not what is trained (the composer's plan does not depend on the number of
# workers). A changed data path is refused: it may hold other data.
RESUMABLE_FIELDS = frozenset({"data_cache", "loader_workers", "num_workers", "progress_every_s"})


def resume_differences(saved: dict[str, Any], config: TrialConfig) -> list[str]:
    """``field (saved -> running)`` for each field of a checkpoint's saved config (``to_dict`` form)
    that differs from ``config``, except :data:`RESUMABLE_FIELDS`. Fields the checkpoint lacks
    (written before they existed) are not compared."""
    running = config.to_dict()
    return [f"{name} ({saved[name]!r} -> {running[name]!r})" for name in running
            if name in saved and name not in RESUMABLE_FIELDS and saved[name] != running[name]]


def describe_fields() -> list[tuple[str, str, str, str]]:
    """``(name, type, default, description)`` of every TrialConfig field, in declaration order."""
    default = TrialConfig()
    return [(f.name, str(f.type).replace("typing.", ""), repr(getattr(default, f.name)), FIELD_DOCS[f.name])
            for f in fields(TrialConfig)]


def _pretrained_tags(model: str) -> list[str]:
    """open_clip's pretrained tags of ``model`` (empty when unknown)."""
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(model))


def _not_int(value: Any) -> bool:
    """Not an int (a bool is not an integer setting)."""
    return isinstance(value, bool) or not isinstance(value, int)


def _not_number(value: Any) -> bool:
    """Not an int or float (a bool is not a number setting)."""
    return isinstance(value, bool) or not isinstance(value, (int, float))


def _choice(cfg: TrialConfig, name: str, allowed: tuple[str, ...]) -> None:
    if getattr(cfg, name) not in allowed:
        raise ConfigError(f"{name}={getattr(cfg, name)!r}: must be one of {', '.join(allowed)}")


__all__ = ["TrialConfig", "ConfigError", "COMPOSER_MODES", "FIELD_DOCS", "RESUMABLE_FIELDS", "describe_fields",
           "resume_differences"]

"""The text tokenizers of the random-init text tower, and their on-disk caches.

Two tokenizers feed the offline ``tiny`` model (``TrialConfig.tokenizer``):

* ``corpus`` (the default): a BPE subword tokenizer trained with Hugging Face ``tokenizers`` on
  the training split's own captions, with every language given the same number of captions
  in its training sample. The text tower is sized to it (vocabulary, context length).
* ``openclip_bpe``: open_clip's English-centric byte-level BPE (49,408 tokens, context 77), kept
  so the tokenizer's effect can itself be studied.

Why a corpus tokenizer: open_clip's BPE splits a Chinese caption of the synthetic data into
~60 byte tokens and an English one into ~14, so the tokenizer, not the batch composition,
would decide which language family retrieves best (docs/tokenizer.md).

The recipe of ``corpus``, and why:

* NFKC, lower case; words split on whitespace with a word-start marker (``Metaspace``, as in
  SentencePiece and XLM-R).
* CJK pieces hold at most :data:`CJK_MAX_CHARS` characters. Chinese and Japanese have no
  spaces, so plain BPE merges whole phrases of a caption into one piece as the vocabulary
  grows (vocabulary 1200: ``色的小菱形``); pruning those merges after training keeps CJK pieces
  at the size of words (``菱形``, ``小さな``, ``ひし形``) while Latin and Cyrillic words stay whole.
* Vocabulary ``TrialConfig.tokenizer_vocab`` (requested; default :data:`VOCAB_SIZE`, of which
  the synthetic corpus fills ~1,400; real text needs more, see ``benchmarks/tokenizers.py``).

Special tokens: ``<pad>`` = 0, ``<unk>`` = 1, ``<bos>`` = 2, ``<eos>`` = 3; every caption is
``<bos> pieces <eos>`` padded with 0. The text tower pools the ``<eos>`` position
(open_clip ``pool_type="eos"``), since ``<eos>`` is not the largest id (open_clip's
default ``argmax`` pooling assumes it is).

Caches, under the data cache (``TrialConfig.data_cache``), each keyed by a hash of what it was
made from and written atomically (a private temp file renamed into place):

* ``text/tokenizer-<key>/``: an HF tokenizer folder (``tokenizer.json`` and
  ``tokenizer_config.json``, loadable with ``AutoTokenizer``, so open_clip's ``HFTokenizer``
  uses it) plus ``mlclip.json`` (context length, vocabulary size, training digest);
  key = (recipe version, vocabulary, CJK cap, digest of the captions).
* ``text/tokens-<key>.npz``: the tokenised training split (see :mod:`trainables.batches`).

A cache that does not load or does not match its key is rebuilt, with one warning line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from trainables.atomic import atomic_folder
from trainables.errors import one_line

log = logging.getLogger(__name__)

RECIPE_VERSION = 1
VOCAB_SIZE = 2000
CJK_MAX_CHARS = 3
PER_LANGUAGE = 2000  # captions of each language in the tokenizer's training sample
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
PAD_ID, UNK_ID, BOS_ID, EOS_ID = range(4)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # kana and Han
META_NAME = "mlclip.json"


@dataclass(frozen=True)
class TextTokenizer:
    """What the model and the data need of a tokenizer.

    tokenize: list[str] -> int64 [B, context_length]; count: list[str] -> untruncated tokens per
    text, start and end tokens included; vocab_size: embedding rows the tower needs;
    eos_id: None for open_clip's BPE (``argmax`` pooling), else the id the tower pools;
    name: ``corpus`` or ``openclip_bpe``; key: identifies the tokenizer in cache keys;
    longest: tokens of the longest training caption, ``<bos>``/``<eos>`` included (None if unknown).
    """

    tokenize: Callable[[list[str]], torch.Tensor]
    count: Callable[[list[str]], list[int]]
    vocab_size: int
    context_length: int
    eos_id: Optional[int]
    name: str
    key: str
    longest: Optional[int] = None


def captions_digest(captions: Sequence[dict]) -> str:
    """sha256 of the captions (rows of {language: caption}), order and content."""
    h = hashlib.sha256()
    for row in captions:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def balanced_sample(captions: Sequence[dict], per_language: int = PER_LANGUAGE, seed: int = 0) -> list[str]:
    """The same number of captions from every language present (the fewest any has, at most
    ``per_language``), drawn at random with ``seed``: no language dominates the merges."""
    by_lang: dict[str, list[str]] = {}
    for row in captions:
        for lang, text in row.items():
            if text and text.strip():
                by_lang.setdefault(lang, []).append(text)
    if not by_lang:
        raise ValueError("no caption to train a tokenizer on")
    n = min(per_language, min(len(v) for v in by_lang.values()))
    rng = random.Random(seed)
    out: list[str] = []
    for lang in sorted(by_lang):
        out += rng.sample(by_lang[lang], n)
    return out


def train_bpe(texts: Sequence[str], vocab_size: int = VOCAB_SIZE, cjk_max_chars: int = CJK_MAX_CHARS):
    """A ``tokenizers.Tokenizer`` (BPE, recipe in the module docstring) trained on ``texts``."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIALS[UNK_ID]))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    tok = _prune_cjk_merges(tok, cjk_max_chars)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[BOS_ID]} $A {SPECIALS[EOS_ID]}",
        special_tokens=[(SPECIALS[BOS_ID], BOS_ID), (SPECIALS[EOS_ID], EOS_ID)],
    )
    return tok


def _prune_cjk_merges(tok, max_chars: int):
    """Drop the merges (and their pieces) that would make a CJK piece longer than ``max_chars``;
    ids are renumbered densely in their original order."""
    from tokenizers import Tokenizer

    spec = json.loads(tok.to_str())
    model = spec["model"]
    dropped: set[str] = set()
    kept = []
    for merge in model["merges"]:
        a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
        piece = a + b
        if a in dropped or b in dropped or (_CJK.search(piece) and len(piece.lstrip("\u2581")) > max_chars):
            dropped.add(piece)
        else:
            kept.append([a, b])
    order = [p for p, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1]) if p not in dropped]
    model["vocab"], model["merges"] = {p: i for i, p in enumerate(order)}, kept
    return Tokenizer.from_str(json.dumps(spec))


# --------------------------------------------------------------------------- caches
def corpus_tokenizer_dir(cache: Path, captions: Sequence[dict], vocab_size: int = VOCAB_SIZE,
                         digest: Optional[str] = None) -> tuple[Path, str]:
    """``(folder, digest)`` of the cached corpus tokenizer of ``captions``; ``digest``: their
    :func:`captions_digest` when the caller has it already (computed here otherwise)."""
    digest = digest or captions_digest(captions)
    key = hashlib.sha256(json.dumps([RECIPE_VERSION, vocab_size, CJK_MAX_CHARS, digest]).encode()).hexdigest()[:16]
    return cache / "text" / f"tokenizer-{key}", digest


def build_corpus_tokenizer(cache: Path, captions: Sequence[dict], vocab_size: int = VOCAB_SIZE,
                           digest: Optional[str] = None) -> Path:
    """The HF tokenizer folder of ``captions``' corpus tokenizer: trained once, then reused.

    ``digest``: the :func:`captions_digest` of ``captions`` when the caller has it (a trial computes
    it once for this and for its tokenised-set cache). A cached folder that fails to load or whose
    digest differs is rebuilt, with one warning.
    """
    folder, digest = corpus_tokenizer_dir(cache, captions, vocab_size, digest)
    problem = _check_tokenizer_dir(folder, digest)
    if problem is None:
        return folder
    if folder.exists():
        log.warning("rebuilding the cached tokenizer %s: %s", folder, problem)
        shutil.rmtree(folder, ignore_errors=True)

    def write(tmp: Path) -> None:
        from transformers import PreTrainedTokenizerFast

        tok = train_bpe(balanced_sample(captions), vocab_size)
        lengths = [len(e.ids) for e in tok.encode_batch([t for row in captions for t in row.values() if t])]
        PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token=SPECIALS[PAD_ID], unk_token=SPECIALS[UNK_ID],
            bos_token=SPECIALS[BOS_ID], eos_token=SPECIALS[EOS_ID],
        ).save_pretrained(str(tmp))
        meta = {"digest": digest, "vocab_size": tok.get_vocab_size(), "longest": max(lengths),
                "recipe_version": RECIPE_VERSION}
        (tmp / META_NAME).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    atomic_folder(folder, write, done=META_NAME)  # another process's copy is the same tokenizer
    return folder


def _check_tokenizer_dir(folder: Path, digest: str) -> Optional[str]:
    """None when ``folder`` holds a loadable tokenizer trained on ``digest``; else what is wrong."""
    if not (folder / META_NAME).is_file():
        return "missing" if not folder.exists() else f"no {META_NAME}"
    try:
        meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
        from tokenizers import Tokenizer

        vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size()
    except Exception as err:  # noqa: BLE001 - any unreadable cache is rebuilt
        return f"unreadable ({type(err).__name__}: {one_line(err)})"
    if meta.get("digest") != digest:
        return "it was trained on other captions"
    if meta.get("vocab_size") != vocab:
        return "its metadata does not match its vocabulary"
    return None


def context_for(longest: int) -> int:
    """The context length just above the longest caption: the next multiple of 4 above it."""
    return (int(longest) // 4 + 1) * 4


def load_corpus_tokenizer(folder: Path, context_length: Optional[int] = None) -> TextTokenizer:
    """open_clip's ``HFTokenizer`` over a cached corpus tokenizer folder.

    ``context_length`` None: :func:`context_for` of the longest training caption.
    """
    from open_clip.tokenizer import HFTokenizer

    meta = json.loads((folder / META_NAME).read_text(encoding="utf-8"))
    context = int(context_length or context_for(meta["longest"]))
    hf = HFTokenizer(str(folder), context_length=context)
    return TextTokenizer(
        tokenize=lambda texts: hf(list(texts)),
        count=lambda texts: [len(ids) for ids in hf.tokenizer(list(texts))["input_ids"]],
        vocab_size=int(meta["vocab_size"]), context_length=context,
        eos_id=EOS_ID, name="corpus", key=f"corpus-{folder.name}-c{context}", longest=int(meta["longest"]),
    )


def openclip_bpe(model_name: str, context_length: Optional[int] = None) -> TextTokenizer:
    """open_clip's tokenizer of ``model_name`` (its BPE for the tiny model), context 77 by default."""
    import open_clip

    tok = open_clip.get_tokenizer(model_name, **({"context_length": context_length} if context_length else {}))
    context = int(getattr(tok, "context_length", 77))
    vocab = int(getattr(tok, "vocab_size", 49408))
    inner = getattr(tok, "encode", None)  # open_clip's SimpleTokenizer: ids without start/end
    return TextTokenizer(tokenize=lambda texts: tok(list(texts)),
                         count=lambda texts: [len(inner(t)) + 2 for t in texts] if inner else [0] * len(texts),
                         vocab_size=vocab, context_length=context,
                         eos_id=None, name="openclip_bpe", key=f"openclip-{model_name}-c{context}")


def truncated_share(texts: Sequence[str], tok: TextTokenizer) -> float:
    """Share of ``texts`` with more tokens than ``tok.context_length`` (their end is cut off)."""
    counts = tok.count(list(texts)) if texts else []
    return sum(c > tok.context_length for c in counts) / len(counts) if counts else 0.0

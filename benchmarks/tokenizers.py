"""Tokens per caption by language, and the share cut off by the context, for both tokenizers.

For each caption set (the default synthetic train + test captions; the real XTD10 caption
files when a folder is given) and each tokenizer (``corpus``: the project's BPE trained on that
caption set, languages balanced, see :mod:`trainables.tokenizer`; ``openclip_bpe``: open_clip's
English BPE at its context of 77), it prints the mean tokens per caption (start and end token
included) of every language, the max/min ratio of those means over the languages, and the
share of captions longer than the context. The corpus tokenizer's context is the one a trial
would use: just above the longest caption of its training captions.

On XTD10 the corpus tokenizer is trained on the XTD10 captions themselves: XTD10 is a test
set, so this only shows what the recipe does on real text in these 11 languages (a real
study trains it on its training corpus, e.g. a multilingual COCO caption manifest).

    python -m benchmarks.tokenizers --xtd ../shared/xtd10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks._common import print_table
from trainables.languages import LANGUAGES


def caption_sets(xtd: str | None, train_size: int = 4000) -> dict[str, tuple[list[dict], list[dict]]]:
    """name -> (captions the corpus tokenizer is trained on, captions measured)."""
    from trainables.data.synthetic import generate_synthetic

    train, test = generate_synthetic(train_size, train_size // 8)
    sets = {"synthetic": (train.captions, train.captions + test.captions)}
    if xtd:
        from trainables.data.xtd import _read_captions, _read_names

        folder = Path(xtd)
        rows, _ = _read_captions(folder, LANGUAGES, len(_read_names(folder)))
        sets["XTD10"] = (rows, rows)
    return sets


def measure(measured: list[dict], tok) -> tuple[dict[str, float], dict[str, float]]:
    """Mean tokens per caption and truncated share, per language."""
    from trainables.tokenizer import truncated_share

    means, cut = {}, {}
    for lang in LANGUAGES:
        texts = [row[lang] for row in measured if row.get(lang)]
        means[lang] = statistics.mean(tok.count(texts))
        cut[lang] = truncated_share(texts, tok)
    return means, cut


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--xtd", help="an XTD10 folder (caption files and test_image_names.txt)")
    p.add_argument("--vocab", type=int, nargs="+", default=[2000], help="corpus tokenizer vocabulary sizes to measure")
    p.add_argument("--tiny", action="store_true", help="smoke run: 200 synthetic captions")
    args = p.parse_args(argv)
    from trainables import tokenizer as tk
    from trainables.model import TINY_NAME, _register_local_configs

    _register_local_configs()
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        for name, (train, measured) in caption_sets(args.xtd, 200 if args.tiny else 4000).items():
            corpora = [tk.load_corpus_tokenizer(tk.build_corpus_tokenizer(Path(cache), train, v)) for v in args.vocab]
            for tok in (*corpora, tk.openclip_bpe(TINY_NAME)):
                means, cut = measure(measured, tok)
                label = f"{tok.name} {tok.vocab_size}" if tok.name == "corpus" else tok.name
                rows.append([name, f"{label} (ctx {tok.context_length})",
                             *(f"{means[lang]:.1f} / {100 * cut[lang]:.0f}%" for lang in LANGUAGES),
                             f"{max(means.values()) / min(means.values()):.2f}"])
    print_table(["captions", "tokenizer", *LANGUAGES, "max/min"], rows,
                title="mean tokens per caption / share truncated, per language")
    return rows


if __name__ == "__main__":
    main()

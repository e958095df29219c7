"""The corpus tokenizer: language balance, CJK units, caches, and the text tower it sizes."""

import logging
import statistics

import numpy as np
import pytest
import torch

from trainables import tokenizer as tk
from trainables.batches import cached_tokenize_set
from trainables.config import ConfigError, TrialConfig
from trainables.data.synthetic import generate_synthetic
from trainables.languages import LANGUAGES
from trainables.model import build_model, make_tokenizer


@pytest.fixture(scope="module")
def corpus():
    """The default synthetic train split (4000 images) and test split (500), captions only."""
    train, test = generate_synthetic(4000, 500)
    return train.captions, test.captions


@pytest.fixture(scope="module")
def corpus_tok(corpus, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tok")
    return tk.load_corpus_tokenizer(tk.build_corpus_tokenizer(cache, corpus[0]))


def test_balanced_sample_takes_the_same_number_from_every_language():
    rows = [{"en": f"en {i}", "de": f"de {i}"} for i in range(50)] + [{"zh": f"zh {i}"} for i in range(7)]
    sample = tk.balanced_sample(rows, per_language=20)
    counts = {lang: sum(t.startswith(lang) for t in sample) for lang in ("en", "de", "zh")}
    assert counts == {"en": 7, "de": 7, "zh": 7}  # the fewest any language has


def test_fair_on_the_synthetic_captions(corpus, corpus_tok):
    """The goal: mean tokens per caption within 2x over the 11 languages, and nothing truncated."""
    train, test = corpus
    means = {lang: statistics.mean(corpus_tok.count([row[lang] for row in train + test])) for lang in LANGUAGES}
    assert max(means.values()) / min(means.values()) <= 2.0, means
    assert tk.truncated_share([t for row in train + test for t in row.values()], corpus_tok) == 0.0
    assert corpus_tok.context_length == tk.context_for(corpus_tok.longest) > corpus_tok.longest


def test_cjk_pieces_are_characters_or_words(corpus_tok, tmp_path):
    from tokenizers import Tokenizer

    folder = tk.build_corpus_tokenizer(tmp_path, generate_synthetic(400, 0)[0].captions)
    vocab = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab()
    cjk = [p.lstrip("\u2581") for p in vocab if tk._CJK.search(p)]
    assert cjk and max(len(p) for p in cjk) <= tk.CJK_MAX_CHARS
    assert "\u2581circle" in vocab  # Latin words stay whole


def test_special_tokens_frame_every_caption(corpus_tok):
    tokens = corpus_tok.tokenize(["a red circle", "右边的一个红色的圆形"])
    assert tokens.shape == (2, corpus_tok.context_length)
    for row in tokens.tolist():
        end = row.index(tk.EOS_ID)
        assert row[0] == tk.BOS_ID and all(t == tk.PAD_ID for t in row[end + 1:])
        assert tk.UNK_ID not in row


def test_the_tower_pools_the_end_token(corpus_tok):
    """open_clip's default argmax pooling would pick the largest id; the tower must pool <eos>."""
    model = build_model(TrialConfig(), tokenizer=corpus_tok).model.eval()
    assert model.text_pool_type == "eos" and model.text_eos_id == tk.EOS_ID
    tokens = corpus_tok.tokenize(["a red circle on the left"])
    end = int((tokens[0] == tk.EOS_ID).nonzero()[0])
    after = tokens.clone()
    after[0, end + 1:] = 7  # anything after <eos> is invisible to it (causal mask)
    before = tokens.clone()
    before[0, end - 1] = 7
    with torch.no_grad():
        base, same, other = (model.encode_text(t) for t in (tokens, after, before))
    assert torch.allclose(base, same) and not torch.allclose(base, other)


def test_cached_tokenizer_is_reused_and_a_corrupt_one_rebuilt(tmp_path, caplog):
    captions = generate_synthetic(200, 0)[0].captions
    folder = tk.build_corpus_tokenizer(tmp_path, captions)
    stamp = (folder / "tokenizer.json").stat().st_mtime_ns
    assert tk.build_corpus_tokenizer(tmp_path, captions) == folder
    assert (folder / "tokenizer.json").stat().st_mtime_ns == stamp  # not trained again
    (folder / "tokenizer.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        assert tk.build_corpus_tokenizer(tmp_path, captions) == folder
    assert "rebuilding the cached tokenizer" in caplog.text
    tk.load_corpus_tokenizer(folder).tokenize(["a red circle"])
    other = tk.build_corpus_tokenizer(tmp_path, captions[:100])
    assert other != folder  # keyed by the captions it was trained on


def test_cached_tokenised_set_equals_a_fresh_one_and_a_corrupt_one_is_rebuilt(tmp_path, caplog, corpus_tok):
    train, _ = generate_synthetic(64, 0)
    first = cached_tokenize_set(train, corpus_tok, tmp_path)
    again = cached_tokenize_set(train, corpus_tok, tmp_path)
    assert torch.equal(first.tokens, again.tokens) and torch.equal(first.available, again.available)
    (cache_file,) = (tmp_path / "text").glob("tokens-*.npz")
    cache_file.write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING):
        rebuilt = cached_tokenize_set(train, corpus_tok, tmp_path)
    assert "rebuilding the cached tokenised train set" in caplog.text
    assert torch.equal(rebuilt.tokens, first.tokens)
    np.load(cache_file)  # written anew


def test_a_short_context_reports_the_share_it_cuts(tmp_path, corpus_tok):
    train, _ = generate_synthetic(64, 0)
    short = tk.TextTokenizer(**{**corpus_tok.__dict__, "context_length": 8, "key": "short"})
    out = cached_tokenize_set(train, short, tmp_path)
    assert 0.5 < out.truncated_share <= 1.0
    assert out.tokens.shape[-1] == corpus_tok.context_length  # the tokenize fn keeps its own context


def test_openclip_bpe_stays_selectable(data_cache):
    config = TrialConfig(tokenizer="openclip_bpe", synthetic_train_size=64, synthetic_test_size=16, data_cache=data_cache)
    tok = make_tokenizer(config)
    assert (tok.name, tok.context_length, tok.vocab_size, tok.eos_id) == ("openclip_bpe", 77, 49408, None)
    assert build_model(config, tokenizer=tok).model.text_pool_type == "argmax"


@pytest.mark.parametrize("changes, message", [
    ({"tokenizer": "sentencepiece"}, "tokenizer='sentencepiece': must be one of auto, corpus, openclip_bpe"),
    ({"tokenizer": "corpus", "model": "ViT-B-32"}, "only the offline tiny model"),
    ({"context_length": 1}, "context_length=1: must be an integer >= 2"),
    ({"context_length": True}, "context_length=True"),
])
def test_tokenizer_settings_are_checked(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrialConfig(**changes)

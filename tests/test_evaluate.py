"""Tests of trainables.evaluate on constructed XTD-format embeddings."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F

from trainables.evaluate import embed_dataset, evaluate_embeddings
from trainables.languages import LANGUAGES

# MLflow metric names: alphanumerics, underscores, dashes, periods, spaces, colons, slashes.
MLFLOW_NAME = re.compile(r"^[A-Za-z0-9_\-. :/]+$")


def perfect_case(n: int = 40, d: int = 64, langs=("en", "de", "fr", "ja")):
    """Orthonormal image embeddings; every caption equals its image's embedding."""
    basis, _ = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(0)))
    images = basis.T.contiguous()  # [n, d], orthonormal rows
    return images, {lang: images.clone() for lang in langs}


def noisy_case(seed: int, n: int, d: int, langs, noise: float, extra=None):
    """Captions = image + Gaussian noise (std ``noise``, or ``extra[lang]`` for listed languages)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, d, generator=gen)
    texts = {}
    for lang in langs:
        std = (extra or {}).get(lang, noise)
        texts[lang] = images + std * torch.randn(n, d, generator=gen)
    return images, texts


def chance_ap(n_relevant: int, pool: int, k: int) -> float:
    """E[AP@k] of a uniformly random ranking with R relevant items among P.

    E[AP@k] = (1/R) sum_{i<=min(k,P)} P(rank i relevant) * E[precision@i | rank i relevant]
            = (1/R) sum_i (R/P) * (1 + (i - 1)(R - 1)/(P - 1)) / i.
    """
    r, p = n_relevant, pool
    return sum((1 + (i - 1) * (r - 1) / max(p - 1, 1)) / i for i in range(1, min(k, p) + 1)) / p


def chance_recall(n_relevant: int, pool: int, k: int) -> float:
    """P(at least one of R relevant items among the top k of P) = 1 - C(P-R, k)/C(P, k)."""
    return 1 - math.comb(pool - n_relevant, k) / math.comb(pool, k)


def test_chance_formula_matches_exhaustive_enumeration():
    # P=5 items, R=2 relevant, k=3: average AP@3 over every placement of the relevant items.
    total, count = 0.0, 0
    for rel_ranks in itertools.combinations(range(1, 6), 2):
        hits = [r for r in sorted(rel_ranks) if r <= 3]
        total += sum((h + 1) / r for h, r in enumerate(hits)) / 2
        count += 1
    assert chance_ap(2, 5, 3) == pytest.approx(total / count)


# ---------------------------------------------------------------- values


def test_perfect_embeddings_give_map_one_and_no_bias():
    images, texts = perfect_case()
    out = evaluate_embeddings(images, texts, k=100)
    scored = {name: v for name, v in out.items() if name.startswith(("map100/", "recall"))}
    assert scored and all(v == pytest.approx(1.0, abs=1e-9) for v in scored.values()), scored
    assert out["bias/multilingual"] == 0.0
    assert out["bias/multilingual/normalised"] == 0.0
    assert all(out[f"bias/multilingual/meanrank/{lang}"] == 1.0 for lang in texts)


def test_random_embeddings_are_near_chance():
    n, langs, seeds = 300, ("en", "de", "fr", "ja"), range(5)
    runs = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        images = torch.randn(n, 32, generator=gen)
        texts = {lang: torch.randn(n, 32, generator=gen) for lang in langs}  # independent of the images
        runs.append(evaluate_embeddings(images, texts, k=100))
    out = {name: sum(r[name] for r in runs) / len(runs) for name in runs[0]}
    n_langs = len(langs)
    # Measured spread of one run around chance (20 seeds): ~10% of chance for the
    # monolingual/cross-lingual means, ~23% for the multilingual ones (fewer, correlated
    # queries). Averaging 5 runs divides that by ~2.2; tolerances are >= 3 standard errors.
    assert out["map100/monolingual"] == pytest.approx(chance_ap(1, n, 100), rel=0.2)
    assert out["map100/crosslingual"] == pytest.approx(chance_ap(1, n, 100), rel=0.2)
    assert out["map100/multilingual/i2t"] == pytest.approx(chance_ap(n_langs, n * n_langs, 100), rel=0.35)
    assert out["map100/multilingual/t2t"] == pytest.approx(chance_ap(n_langs - 1, n * n_langs - 1, 100), rel=0.35)
    assert out["recall10/crosslingual"] == pytest.approx(chance_recall(1, n, 10), rel=0.2)
    assert out["bias/multilingual/normalised"] < 0.1  # about 0.035 expected per run for 4 languages, 300 images
    # The mean rank of a random caption among L*(N-1) irrelevant ones is about 1 + L*(N-1)/2.
    assert out["bias/multilingual/meanrank"] == pytest.approx(1 + n_langs * (n - 1) / 2, rel=0.1)


def test_pushed_away_language_has_worst_mean_rank():
    langs = ("en", "de", "fr", "ko")
    images, texts = noisy_case(2, 200, 32, langs, noise=0.8, extra={"ko": 2.5})
    out = evaluate_embeddings(images, texts)
    ranks = {lang: out[f"bias/multilingual/meanrank/{lang}"] for lang in langs}
    assert max(ranks, key=ranks.get) == "ko"
    assert out["bias/multilingual"] == pytest.approx(ranks["ko"] - min(ranks.values()))
    assert out["bias/multilingual"] > 1.0
    assert 0 < out["bias/multilingual/normalised"] < 1
    assert min(langs, key=lambda lang: out[f"map100/monolingual/lang/{lang}"]) == "ko"


def test_multilingual_text_queries_exclude_their_own_caption():
    # de captions are near-copies of en captions: if the query's own caption stayed in
    # the pool it would rank first (irrelevant) and AP would drop to (1/2) / 1 = 0.5.
    images, texts = noisy_case(3, 50, 64, ("en",), noise=0.3)
    texts["de"] = texts["en"] + 0.05 * torch.randn(50, 64, generator=torch.Generator().manual_seed(4))
    out = evaluate_embeddings(images, texts)
    assert out["map100/multilingual/lang/en"] == pytest.approx(1.0)
    assert out["map100/multilingual/lang/de"] == pytest.approx(1.0)
    assert out["recall1/multilingual/t2t"] == pytest.approx(1.0)


def test_aggregates_are_means_of_their_parts():
    langs = ("en", "de", "fr", "es", "ja")
    images, texts = noisy_case(5, 60, 16, langs, noise=1.2)
    out = evaluate_embeddings(images, texts, k=20)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    for lang in langs:
        assert out[f"map20/monolingual/lang/{lang}"] == pytest.approx(
            mean([out[f"map20/monolingual/t2i/lang/{lang}"], out[f"map20/monolingual/i2t/lang/{lang}"]])
        )
        pairs = [out[f"map20/crosslingual/pair/{lang}-{b}"] for b in langs if b != lang]
        assert out[f"map20/crosslingual/lang/{lang}"] == pytest.approx(mean(pairs))
        targets = [out[f"map20/crosslingual/pair/{a}-{lang}"] for a in langs if a != lang]
        assert out[f"map20/crosslingual/target/{lang}"] == pytest.approx(mean(targets))
    for setting in ("monolingual", "crosslingual", "multilingual"):
        assert out[f"map20/{setting}/family/germanic"] == pytest.approx(
            mean([out[f"map20/{setting}/lang/en"], out[f"map20/{setting}/lang/de"]])
        )
        assert out[f"recall5/{setting}/family/japonic"] == pytest.approx(out[f"recall5/{setting}/lang/ja"])
    all_pairs = [v for name, v in out.items() if name.startswith("map20/crosslingual/pair/")]
    assert len(all_pairs) == 20 and out["map20/crosslingual"] == pytest.approx(mean(all_pairs))
    assert out["map20/monolingual"] == pytest.approx(mean([out["map20/monolingual/t2i"], out["map20/monolingual/i2t"]]))
    assert out["map20/multilingual/t2t"] == pytest.approx(mean([out[f"map20/multilingual/lang/{x}"] for x in langs]))
    halves = [out["map20/multilingual/i2t"], out["map20/multilingual/t2t"]]
    assert out["map20/multilingual"] == pytest.approx(mean(halves))


def test_chunking_and_scaling_do_not_change_results():
    images, texts = noisy_case(6, 45, 16, ("en", "fr", "zh"), noise=1.0)
    base = evaluate_embeddings(images, texts)
    chunked = evaluate_embeddings(images, texts, chunk_size=7)
    scaled = evaluate_embeddings(3 * images, {lang: 0.5 * t for lang, t in texts.items()})
    assert base.keys() == chunked.keys() == scaled.keys()
    for name in base:
        assert chunked[name] == pytest.approx(base[name], abs=1e-9)
        assert scaled[name] == pytest.approx(base[name], abs=1e-6)


# ---------------------------------------------------------------- names


def test_metric_names_are_mlflow_valid_and_complete_for_all_languages():
    images, texts = noisy_case(7, 30, 8, LANGUAGES, noise=1.0)
    out = evaluate_embeddings(images, texts)
    assert all("@" not in name and MLFLOW_NAME.match(name) for name in out)
    assert all(isinstance(v, float) and math.isfinite(v) for v in out.values())
    pairs = [name for name in out if name.startswith("map100/crosslingual/pair/")]
    assert len(pairs) == 110
    assert not any(name.startswith("recall") and "/pair/" in name for name in out)
    for name in ("map100/monolingual", "map100/crosslingual", "map100/multilingual", "recall1/monolingual/t2i",
                 "recall10/multilingual/i2t", "map100/monolingual/family/romance", "map100/crosslingual/pair/fr-de",
                 "bias/multilingual", "bias/multilingual/normalised", "bias/multilingual/meanrank/ko"):
        assert name in out


def test_only_present_languages_count():
    images, texts = noisy_case(8, 30, 8, ("en", "fr"), noise=1.0)
    out = evaluate_embeddings(images, texts, k=10, ks=(1,))
    langs = {m.group(1) for name in out for m in [re.search(r"/(?:lang|target|meanrank)/(\w+)$", name)] if m}
    families = {name.rsplit("/", 1)[1] for name in out if "/family/" in name}
    assert langs == {"en", "fr"} and families == {"germanic", "romance"}
    assert {name.split("/")[0] for name in out} == {"map10", "recall1", "bias"}


def test_single_language_has_no_crosslingual_or_text_to_text():
    images, texts = noisy_case(9, 30, 8, ("de",), noise=1.0)
    out = evaluate_embeddings(images, texts)
    assert not any("crosslingual" in name or "t2t" in name or "multilingual/lang" in name for name in out)
    assert out["map100/multilingual"] == out["map100/multilingual/i2t"]
    assert out["bias/multilingual"] == 0.0


def test_language_aliases_and_errors():
    images, texts = noisy_case(10, 20, 8, ("en",), noise=1.0)
    out = evaluate_embeddings(images, {"en": texts["en"], "jp": texts["en"]})
    assert "map100/monolingual/lang/ja" in out
    with pytest.raises(ValueError):
        evaluate_embeddings(images, {"en": texts["en"][:10]})
    with pytest.raises(ValueError):
        evaluate_embeddings(images, {"xx": texts["en"]})
    with pytest.raises(ValueError):
        evaluate_embeddings(images, {"ja": texts["en"], "jp": texts["en"]})


# ---------------------------------------------------------------- embed_dataset


class FakeModel(torch.nn.Module):
    """open_clip-like: linear image and bag-of-tokens text encoders."""

    def __init__(self):
        super().__init__()
        self.image_proj = torch.nn.Linear(3 * 4 * 4, 6)
        self.token_emb = torch.nn.Embedding(50, 6)
        self.modes: list[bool] = []

    def encode_image(self, x, normalize=False):
        self.modes.append(self.training)
        out = self.image_proj(x.flatten(1))
        return F.normalize(out, dim=-1) if normalize else out

    def encode_text(self, tokens, normalize=False):
        assert torch.is_grad_enabled() is False
        out = self.token_emb(tokens).sum(1)
        return F.normalize(out, dim=-1) if normalize else out


class FakeData:
    def __init__(self, n: int):
        self.images = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.captions = [{"en": f"a photo {i}", "jp": f"写真 {i}", "de": f"ein Foto {i}"} for i in range(n)]


def fake_tokenize(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[ord(c) % 50 for c in (t + " " * 12)[:12]] for t in texts], dtype=torch.long)


def test_embed_dataset_shapes_modes_and_batching():
    model, data = FakeModel(), FakeData(7)
    model.train()
    image_emb, text_emb = embed_dataset(model, fake_tokenize, lambda b: b.float() / 255, data, "cpu", batch_size=3)
    assert model.training and model.modes == [False, False, False]  # eval during, restored after
    assert image_emb.shape == (7, 6) and not image_emb.requires_grad
    assert list(text_emb) == ["en", "de", "ja"]  # canonical codes, canonical order
    assert all(t.shape == (7, 6) for t in text_emb.values())
    want = F.normalize(model.token_emb(fake_tokenize([c["de"] for c in data.captions])).sum(1), dim=-1)
    assert torch.allclose(text_emb["de"], want.detach(), atol=1e-6)
    out = evaluate_embeddings(image_emb, text_emb)
    assert "map100/crosslingual/pair/ja-de" in out


def test_embed_dataset_languages_and_missing_captions():
    model, data = FakeModel(), FakeData(4)
    _, text_emb = embed_dataset(model, fake_tokenize, lambda b: b.float(), data, "cpu", languages=["ja"])
    assert list(text_emb) == ["ja"]
    del data.captions[2]["de"]
    data.captions[1]["xx"] = "not a table language"  # ignored
    data.captions[3]["en"] = "   "  # empty caption = missing
    _, text_emb = embed_dataset(model, fake_tokenize, lambda b: b.float(), data, "cpu", batch_size=2)
    assert list(text_emb) == ["en", "de", "ja"]
    assert torch.isnan(text_emb["de"][2]).all() and torch.isfinite(text_emb["de"][[0, 1, 3]]).all()
    assert torch.isnan(text_emb["en"][3]).all() and torch.isfinite(text_emb["ja"]).all()
    with pytest.raises(ValueError, match="ko"):
        embed_dataset(model, fake_tokenize, lambda b: b.float(), data, "cpu", languages=["de", "ko"])


# ---------------------------------------------------------------- missing captions


def test_missing_captions_are_left_out_of_pools_and_queries():
    # Perfect embeddings stay perfect only if every missing caption (NaN row) is dropped
    # from the pools and every query with nothing left to find is not asked.
    images, texts = perfect_case(langs=("en", "de", "fr", "ko"))
    texts["de"][[0, 5, 6]] = float("nan")
    texts["fr"][[5, 9]] = float("nan")
    texts["ko"][:] = float("nan")  # a language without any caption does not count
    out = evaluate_embeddings(images, texts)
    assert not any("/ko" in name or "koreanic" in name for name in out)
    scored = {name: v for name, v in out.items() if name.startswith(("map100/", "recall"))}
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in scored.values()), scored
    assert out["bias/multilingual"] == 0.0


def test_missing_captions_only_remove_their_own_queries():
    images, texts = noisy_case(11, 40, 16, ("en", "de"), noise=1.5)
    full = evaluate_embeddings(images, texts)
    texts["de"][3] = float("nan")
    out = evaluate_embeddings(images, texts)
    assert all(math.isfinite(v) for v in out.values())
    assert out["map100/monolingual/t2i/lang/en"] == full["map100/monolingual/t2i/lang/en"]  # untouched
    assert out["map100/crosslingual/pair/en-de"] != full["map100/crosslingual/pair/en-de"]
    with pytest.raises(ValueError):
        texts["de"][4, 0] = float("inf")
        evaluate_embeddings(images, texts)

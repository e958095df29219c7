"""Synthetic multilingual data: determinism, languages/scripts, grammar, disjointness, cache."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.config import TrialConfig
from trainables.data import generate_synthetic, load_synthetic, load_xtd, synthetic_cache_dir
from trainables.data import synthetic as synthetic_module
from trainables.data.grammars import GRAMMARS, Mention as M, ko_has_batchim, render_caption, template_count, tr_suffix
from trainables.languages import LANGUAGES


@pytest.fixture(scope="module")
def splits():
    return generate_synthetic(60, 30, image_size=32, seed=7)


# --------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_data(splits):
    again = generate_synthetic(60, 30, image_size=32, seed=7)
    for a, b in zip(splits, again):
        assert torch.equal(a.images, b.images)
        assert a.captions == b.captions and a.names == b.names


def test_different_seed_gives_different_data(splits):
    other_train, _ = generate_synthetic(60, 0, image_size=32, seed=8)
    assert not torch.equal(splits[0].images, other_train.images)
    assert sum(a != b for a, b in zip(splits[0].captions, other_train.captions)) > 30


def test_shapes_and_sizes(splits):
    train, test = splits
    assert train.images.dtype == torch.uint8 and tuple(train.images.shape) == (60, 3, 32, 32)
    assert tuple(test.images.shape) == (30, 3, 32, 32)
    big, _ = generate_synthetic(3, 0, image_size=64, seed=0)
    assert tuple(big.images.shape) == (3, 3, 64, 64)


def test_rendered_colour_matches_scene():
    """The centre pixel of a lone filled shape has (about) the shape's colour."""
    checked = 0
    for index in range(100):
        rng = synthetic_module._stream(0, "train", index, 0)
        shapes = synthetic_module.sample_scene(rng)
        image = synthetic_module.render_scene(shapes, rng, 64)
        if len(shapes) == 1 and shapes[0].shape != "ring":
            s = shapes[0]
            pixel = image[:, round(s.cy * 64), round(s.cx * 64)].astype(int)
            assert np.abs(pixel - np.array(s.rgb)).max() < 40, (s, pixel)
            checked += 1
    assert checked >= 5


# --------------------------------------------------------------------------- languages and scripts
def test_every_image_has_a_caption_in_every_language(splits):
    for data in splits:
        assert data.languages() == LANGUAGES
        assert data.caption_counts() == {lang: len(data) for lang in LANGUAGES}
        for row in data.captions:
            assert all(row[lang].strip() and "\n" not in row[lang] for lang in LANGUAGES)


LATIN = re.compile(r"[A-Za-z]")
CYRILLIC = re.compile(r"[\u0400-\u04FF]")
HAN = re.compile(r"[\u4E00-\u9FFF]")
KANA = re.compile(r"[\u3040-\u30FF]")
HANGUL = re.compile(r"[\uAC00-\uD7A3]")
SCRIPTS = {"latin": LATIN, "cyrillic": CYRILLIC, "han": HAN, "kana": KANA, "hangul": HANGUL}
EXPECTED_SCRIPTS = {  # script every caption must contain -> scripts none may contain
    "en": ("latin", ("cyrillic", "han", "kana", "hangul")),
    "de": ("latin", ("cyrillic", "han", "kana", "hangul")),
    "tr": ("latin", ("cyrillic", "han", "kana", "hangul")),
    "ru": ("cyrillic", ("latin", "han", "kana", "hangul")),
    "zh": ("han", ("latin", "cyrillic", "kana", "hangul")),
    "ja": ("kana", ("latin", "cyrillic", "hangul")),
    "ko": ("hangul", ("latin", "cyrillic", "han", "kana")),
}


@pytest.mark.parametrize("lang", sorted(EXPECTED_SCRIPTS))
def test_scripts(splits, lang):
    required, forbidden = EXPECTED_SCRIPTS[lang]
    for row in splits[0].captions:
        assert SCRIPTS[required].search(row[lang]), row[lang]
        assert not any(SCRIPTS[s].search(row[lang]) for s in forbidden), row[lang]


def test_japanese_uses_han_too_and_french_accents(splits):
    assert any(HAN.search(row["ja"]) for row in splits[0].captions)
    assert any(re.search("[éà]", row["fr"]) for row in splits[0].captions)


@pytest.mark.parametrize("lang", LANGUAGES)
def test_at_least_three_distinct_paraphrases(lang):
    mentions = [M("circle", "red", "large", "left"), M("star", "blue", "small")]
    assert template_count(lang) >= 3
    assert len({render_caption(lang, mentions, t) for t in range(template_count(lang))}) == template_count(lang)


def test_paraphrase_templates_are_all_drawn(splits):
    for lang in ("en", "de", "ko"):
        starts = {render_caption(lang, [M("circle", "red")], t)[:6] for t in range(template_count(lang))}
        assert len(starts) >= 3
    assert len({row["en"].split()[0] for row in splits[0].captions}) >= 3


# --------------------------------------------------------------------------- grammar spot checks
GRAMMAR_CASES = [
    # English: a/an by the next word, there is/are by number
    ("en", [M("star", "orange")], 0, "An orange star"),
    ("en", [M("star", "orange", "large")], 2, "There is a large orange star"),
    ("en", [M("circle", "red", None, "left"), M("ring", "white")], 2,
     "There are a red circle on the left and a white ring"),
    # German: gender x case of article and adjective endings
    ("de", [M("circle", "red", "large")], 0, "Ein großer roter Kreis"),
    ("de", [M("square", "blue", "small")], 0, "Ein kleines blaues Quadrat"),
    ("de", [M("diamond", "yellow", "large")], 0, "Eine große gelbe Raute"),
    ("de", [M("circle", "red", "large", "left"), M("diamond", "green", "small")], 1,
     "Ein Bild mit einem großen roten Kreis links und einer kleinen grünen Raute"),
    ("de", [M("star", "black", "large")], 2, "Das Bild zeigt einen großen schwarzen Stern"),
    ("de", [M("triangle", "white")], 3, "Zu sehen ist ein weißes Dreieck"),
    ("de", [M("triangle", "white"), M("ring", "orange", None, "top")], 3,
     "Zu sehen sind ein weißes Dreieck und ein orangefarbener Ring oben"),
    # French: gender agreement, size before / colour after the noun, invariable orange
    ("fr", [M("star", "green", "large")], 0, "Une grande étoile verte"),
    ("fr", [M("circle", "white", "small", "left")], 0, "Un petit cercle blanc à gauche"),
    ("fr", [M("star", "purple"), M("ring", "orange")], 2, "Il y a une étoile violette et un anneau orange"),
    ("fr", [M("star", "white")], 3, "On voit une étoile blanche"),
    # Spanish: colour and size after the noun; se ve / se ven
    ("es", [M("star", "red", "small")], 0, "Una estrella roja pequeña"),
    ("es", [M("star", "blue"), M("square", "white", "large")], 3, "Se ven una estrella azul y un cuadrado blanco grande"),
    ("es", [M("circle", "black", None, "centre")], 2, "Hay un círculo negro en el centro"),
    # Italian: un/una/un', c'è / ci sono, agreement
    ("it", [M("star", "red", "small")], 1, "Un'immagine con una piccola stella rossa"),
    ("it", [M("ring", "yellow")], 2, "C'è un anello giallo"),
    ("it", [M("circle", "black", "large"), M("star", "white")], 2, "Ci sono un grande cerchio nero e una stella bianca"),
    # Polish: nominative / accusative / instrumental by gender and stem class
    ("pl", [M("star", "red", "large")], 2, "Na obrazku widać dużą czerwoną gwiazdę"),
    ("pl", [M("circle", "blue", "small")], 1, "Obrazek z małym niebieskim kołem"),
    ("pl", [M("circle", "yellow", "large")], 0, "Duże żółte koło"),
    ("pl", [M("square", "black"), M("star", "white")], 3, "Na obrazku są czarny kwadrat i biała gwiazda"),
    # Russian: hard / soft / velar / stressed adjective stems in three cases
    ("ru", [M("star", "red", "large")], 0, "Большая красная звезда"),
    ("ru", [M("ring", "blue", "large")], 0, "Большое синее кольцо"),
    ("ru", [M("ring", "blue", "small")], 2, "Картинка с маленьким синим кольцом"),
    ("ru", [M("star", "blue")], 3, "На картинке можно увидеть синюю звезду"),
    ("ru", [M("star", "green", "small", "right")], 2, "Картинка с маленькой зелёной звездой справа"),
    # Turkish: locative position first, adjectives before "bir", comitative -(y)la/-(y)le
    ("tr", [M("circle", "red", "large", "left"), M("star", "blue", "small", "top")], 0,
     "Solda büyük kırmızı bir daire ve üstte küçük mavi bir yıldız"),
    ("tr", [M("ring", "green"), M("square", "white")], 3, "Yeşil bir halkayla beyaz bir kare görülüyor"),
    ("tr", [M("triangle", "black"), M("star", "purple")], 3, "Siyah bir üçgenle mor bir yıldız görülüyor"),
    # Chinese: measure words 个/颗, 的, existential clauses
    ("zh", [M("star", "blue", "small")], 0, "一颗蓝色的小星星"),
    ("zh", [M("circle", "red", "large", "left"), M("square", "green")], 3, "图中左边有一个红色的大圆形，还有一个绿色的正方形"),
    ("zh", [M("ring", "black")], 2, "一张有一个黑色的圆环的图片"),
    # Japanese: particles and あり/あります
    ("ja", [M("circle", "red", "large", "left"), M("square", "blue", "small", "right")], 3,
     "左に大きな赤い円があり、右に小さな青い正方形があります"),
    ("ja", [M("star", "green")], 1, "緑の星が描かれた画像"),
    ("ja", [M("circle", "white", None, "top"), M("ring", "orange")], 0, "上の白い円とオレンジ色のリング"),
    # Korean: 과/와, 이/가, 을/를 by the final consonant
    ("ko", [M("circle", "red", "large"), M("star", "blue", "small")], 0, "큰 빨간 원과 작은 파란 별"),
    ("ko", [M("diamond", "white"), M("ring", "black")], 0, "흰 마름모와 검은 고리"),
    ("ko", [M("star", "yellow")], 1, "노란 별이 있는 그림"),
    ("ko", [M("diamond", "yellow")], 1, "노란 마름모가 있는 그림"),
    ("ko", [M("ring", "red")], 2, "빨간 고리를 보여 주는 이미지"),
    ("ko", [M("circle", "red")], 2, "빨간 원을 보여 주는 이미지"),
    ("ko", [M("circle", "red", None, "left"), M("diamond", "blue")], 3, "왼쪽에 빨간 원이 있고 파란 마름모가 있습니다"),
]


@pytest.mark.parametrize("lang,mentions,template,expected", GRAMMAR_CASES)
def test_grammar(lang, mentions, template, expected):
    assert render_caption(lang, mentions, template) == expected


def test_morphology_helpers():
    assert [tr_suffix(w, "DA") for w in ("sol", "sağ", "üst", "alt", "orta")] == [
        "solda", "sağda", "üstte", "altta", "ortada"]
    assert [tr_suffix(w, "ylA") for w in ("daire", "yıldız", "halka", "üçgen")] == [
        "daireyle", "yıldızla", "halkayla", "üçgenle"]
    assert ko_has_batchim("원") and ko_has_batchim("별") and not ko_has_batchim("모") and not ko_has_batchim("a")
    assert GRAMMARS["it"].article("m", "zaino") == "uno " and GRAMMARS["it"].article("m", "anello") == "un "
    assert GRAMMARS["it"].article("f", "ellisse") == "un'"
    assert GRAMMARS["tr"].capitalise("içeren") == "İçeren"


# --------------------------------------------------------------------------- train/test disjoint
def _keys(data):
    return {(bytes(img.numpy().tobytes()), tuple(sorted(cap.items()))) for img, cap in zip(data.images, data.captions)}


def test_train_and_test_are_disjoint(splits):
    train, test = splits
    assert not {bytes(i.numpy().tobytes()) for i in train.images} & {bytes(i.numpy().tobytes()) for i in test.images}
    assert not _keys(train) & _keys(test)
    assert not set(train.names) & set(test.names)


def test_duplicate_images_are_redrawn(monkeypatch):
    """If the test split drew the train split's streams, the guard still keeps them disjoint."""
    monkeypatch.setitem(synthetic_module.SPLIT_IDS, "test", synthetic_module.SPLIT_IDS["train"])
    train, test = generate_synthetic(8, 8, image_size=32, seed=1)
    assert len(test) == 8
    assert not {bytes(i.numpy().tobytes()) for i in train.images} & {bytes(i.numpy().tobytes()) for i in test.images}


# --------------------------------------------------------------------------- cache
def _config(tmp_path: Path, **changes) -> TrialConfig:
    base = dict(data_cache=str(tmp_path), synthetic_train_size=40, synthetic_test_size=20, image_size=32, data_seed=3)
    return TrialConfig(**{**base, **changes})


@pytest.fixture
def counted(monkeypatch):
    """Count calls of generate_synthetic made by load_synthetic."""
    calls = []
    real = synthetic_module.generate_synthetic

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_module, "generate_synthetic", counting)
    return calls


def test_cache_is_generated_once_and_reused(tmp_path, counted):
    cfg = _config(tmp_path)
    train, test_dir = load_synthetic(cfg)
    assert len(counted) == 1 and test_dir.parent == synthetic_cache_dir(cfg) and test_dir.parent.parent == tmp_path
    mtime = (test_dir.parent / "train.npz").stat().st_mtime_ns
    again, test_dir2 = load_synthetic(cfg)
    assert len(counted) == 1 and test_dir2 == test_dir
    assert (test_dir.parent / "train.npz").stat().st_mtime_ns == mtime
    assert torch.equal(train.images, again.images) and train.captions == again.captions
    expected, _ = synthetic_module.generate_synthetic(40, 20, image_size=32, seed=3)
    assert torch.equal(train.images, expected.images) and train.captions == expected.captions
    assert [p.name for p in tmp_path.iterdir()] == [test_dir.parent.name]  # no temp folders left


def test_cache_key_depends_on_parameters(tmp_path, counted):
    cfg = _config(tmp_path)
    load_synthetic(cfg)
    for change in ({"data_seed": 4}, {"image_size": 40}, {"synthetic_train_size": 41}):
        assert synthetic_cache_dir(cfg.replace(**change)) != synthetic_cache_dir(cfg)
    _, other = load_synthetic(cfg.replace(data_seed=4))
    assert len(counted) == 2 and other.parent != synthetic_cache_dir(cfg)
    assert synthetic_cache_dir(cfg.replace(lr=0.1, ratio=0.9)) == synthetic_cache_dir(cfg)


def test_default_cache_root_is_under_home():
    assert synthetic_module.cache_root(TrialConfig()) == Path.home() / ".cache" / "mlclip-study"


def test_concurrent_generation_is_safe(tmp_path, monkeypatch):
    """Two writers generate at the same time; both get the same complete data, one folder remains."""
    barrier = threading.Barrier(2, timeout=30)
    real = synthetic_module.generate_synthetic

    def in_lockstep(*args, **kwargs):
        barrier.wait()  # both have seen "no cache" and are generating
        return real(*args, **kwargs)

    monkeypatch.setattr(synthetic_module, "generate_synthetic", in_lockstep)
    cfg = _config(tmp_path, synthetic_train_size=12, synthetic_test_size=6)
    results, errors = [], []

    def worker():
        try:
            results.append(load_synthetic(cfg))
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 2
    assert torch.equal(results[0][0].images, results[1][0].images) and results[0][1] == results[1][1]
    assert [p.name for p in tmp_path.iterdir()] == [synthetic_cache_dir(cfg).name]
    assert len(load_xtd(results[0][1])) == 6


def test_test_split_round_trips_through_xtd_loader(tmp_path):
    cfg = _config(tmp_path)
    _, test_dir = load_synthetic(cfg)
    names = (test_dir / "test_image_names.txt").read_text(encoding="utf-8").splitlines()
    assert len(names) == 20 and (test_dir / "test_1kcaptions_jp.txt").is_file()
    assert not (test_dir / "test_1kcaptions_ja.txt").exists()
    loaded = load_xtd(test_dir)
    _, expected = synthetic_module.generate_synthetic(40, 20, image_size=32, seed=3)
    assert torch.equal(loaded.images, expected.images)
    assert loaded.captions == expected.captions and loaded.names == expected.names == names
    assert loaded.skipped == {"missing_images": 0, "unreadable_images": 0, "empty_captions": 0}

"""JSONL manifests: reading, skips that are counted, and bad lines that are one clear error."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from trainables.config import ConfigError, TrialConfig
from trainables.data.corpora import read_manifest
from trainables.data.sources import load_train_set, train_data_kind
from trainables.data.types import DataError


def image_bytes(colour=(200, 30, 30), size=(20, 12), fmt="PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def write_manifest(folder: Path, records, name="corpus.jsonl") -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def corpus(tmp_path):
    """A manifest of 4 images: 2 readable, 1 missing, 1 corrupt; one empty caption."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(image_bytes((255, 0, 0)))
    (tmp_path / "img" / "b.jpg").write_bytes(image_bytes((0, 0, 255), fmt="JPEG"))
    (tmp_path / "img" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return write_manifest(tmp_path, [
        {"image": "img/a.png", "captions": {"en": "a red box", "jp": "赤い箱", "de": ""}},
        "",
        {"image": "img/gone.png", "captions": {"en": "missing"}},
        {"image": "img/bad.jpg", "captions": {"en": "corrupt"}},
        {"image": "img/b.jpg", "captions": {"fr": "une boîte bleue", "ko": "파란 상자"}},
    ])


def test_manifest_loads_and_counts_skips(corpus):
    data = read_manifest(corpus, image_size=16)
    assert data.images.shape == (2, 3, 16, 16)
    assert data.names == ["img/a.png", "img/b.jpg"]
    assert data.captions[0] == {"en": "a red box", "ja": "赤い箱"}  # jp read as ja, empty de dropped
    assert data.captions[1] == {"fr": "une boîte bleue", "ko": "파란 상자"}
    assert data.skipped == {"missing_images": 1, "unreadable_images": 1, "empty_captions": 1}
    assert data.images[0, 0].float().mean() > 200 and data.images[1, 2].float().mean() > 200  # red, blue


def test_unreadable_policy_error_names_line(corpus):
    with pytest.raises(DataError, match=r"corpus.jsonl line 4: unreadable image img/bad.jpg"):
        read_manifest(corpus, image_size=16, unreadable_policy="error")


@pytest.mark.parametrize("line, message", [
    ({"image": "img/a.png"}, r"corpus.jsonl line 2: no captions"),
    ({"image": "img/a.png", "captions": {}}, r"corpus.jsonl line 2: no captions"),
    ({"image": "img/a.png", "captions": {"en": " "}}, r"line 2: no captions \(every caption is empty\)"),
    ({"image": "img/a.png", "captions": {"en": "x", "xx": "y"}}, r"line 2: unknown language code 'xx'"),
    ({"image": "img/a.png", "captions": {"en": 3}}, r"line 2: caption for 'en' must be a string"),
    ({"captions": {"en": "x"}}, r"line 2: no \"image\" path"),
    ("{not json", r"line 2: not valid JSON"),
    ({"image": "img/first.png", "captions": {"en": "again"}},
     r"line 2: image 'img/first.png' is already listed on line 1"),
])
def test_bad_line_is_one_clear_error(tmp_path, line, message):
    path = write_manifest(tmp_path, [{"image": "img/first.png", "captions": {"en": "ok"}}, line])
    with pytest.raises(DataError, match=message):
        read_manifest(path, image_size=8)


def test_load_train_set_from_manifest(corpus, tmp_path):
    config = TrialConfig(train_data=str(corpus), eval_data=str(tmp_path / "xtd"), image_size=16)
    data, eval_dir = load_train_set(config)
    assert len(data) == 2 and eval_dir == tmp_path / "xtd"


def test_real_train_data_needs_real_eval_data(corpus):
    with pytest.raises(ConfigError, match="eval_data='synthetic' only goes with train_data='synthetic'"):
        load_train_set(TrialConfig(train_data=str(corpus), eval_data="synthetic"))


def test_unknown_train_data_kind():
    with pytest.raises(ConfigError, match=r"train_data='corpus.csv': not 'synthetic', a JSONL manifest"):
        train_data_kind("corpus.csv")
    assert train_data_kind("s/train-{000..009}.tar") == "shards"
    assert train_data_kind("c.jsonl") == "manifest"

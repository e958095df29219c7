"""XTD10-layout loader: real XTD10 caption files, image folder layouts, and one test per bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.data import DataError, ImageCaptionSet, load_xtd, write_xtd
from trainables.languages import LANGUAGES, XTD_FILE_CODES

XTD10 = Path(__file__).resolve().parents[1].parent / "shared" / "xtd10"
N = 6


def _error(**kwargs) -> str:
    """Message of the DataError raised by load_xtd(**kwargs); asserts it is one line."""
    with pytest.raises(DataError) as info:
        load_xtd(**kwargs)
    message = str(info.value)
    assert "\n" not in message and message
    return message


@pytest.fixture
def small(tmp_path) -> tuple[Path, ImageCaptionSet]:
    """A 6-image XTD folder written by write_xtd (8x8 PNGs, one caption per language)."""
    rng = np.random.default_rng(0)
    data = ImageCaptionSet(
        images=torch.from_numpy(rng.integers(0, 256, (N, 3, 8, 8), dtype=np.uint8)),
        captions=[{lang: f"{lang} caption {i}" for lang in LANGUAGES} for i in range(N)],
        names=[f"img_{i}.png" for i in range(N)],
    )
    return write_xtd(data, tmp_path / "xtd"), data


# --------------------------------------------------------------------------- happy paths
def test_round_trip(small):
    folder, data = small
    loaded = load_xtd(folder)
    assert torch.equal(loaded.images, data.images) and loaded.captions == data.captions and loaded.names == data.names
    assert loaded.skipped == {"missing_images": 0, "unreadable_images": 0, "empty_captions": 0}
    assert (folder / "test_1kcaptions_jp.txt").read_text(encoding="utf-8").endswith("ja caption 5\n")


def test_crlf_without_final_newline_reads_the_same(small):
    folder, data = small
    for lang in ("es", "ko", "zh"):
        path = folder / f"test_1kcaptions_{lang}.txt"
        path.write_bytes("\r\n".join(path.read_text(encoding="utf-8").splitlines()).encode("utf-8"))
    assert load_xtd(folder).captions == data.captions


def test_languages_subset_and_jp_alias(small):
    folder, data = small
    loaded = load_xtd(folder, languages=["jp", "en"])
    assert loaded.languages() == ("en", "ja")
    assert loaded.caption_counts() == {"en": N, "ja": N}


def test_empty_caption_is_counted_and_left_out(small):
    folder, _ = small
    path = folder / "test_1kcaptions_de.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[2] = "   "
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = load_xtd(folder)
    assert "de" not in loaded.captions[2] and loaded.captions[2]["en"] == "en caption 2"
    assert loaded.skipped["empty_captions"] == 1 and loaded.caption_counts()["de"] == N - 1


def test_resize_to_square(small):
    folder, _ = small
    Image.new("RGB", (20, 10), (200, 10, 10)).save(folder / "images" / "img_1.png")
    loaded = load_xtd(folder, image_size=12)
    assert tuple(loaded.images.shape) == (N, 3, 12, 12)
    assert loaded.images[1, 0].min() > 180 and loaded.images[1, 1].max() < 40


# --------------------------------------------------------------------------- bad input
def test_missing_folder(tmp_path):
    assert "XTD folder not found" in _error(folder=tmp_path / "nowhere")


def test_missing_names_file(small):
    folder, _ = small
    (folder / "test_image_names.txt").unlink()
    assert "missing test_image_names.txt" in _error(folder=folder)


@pytest.mark.parametrize("lang", ["ko", "ja"])
def test_missing_language_file(small, lang):
    folder, _ = small
    (folder / f"test_1kcaptions_{XTD_FILE_CODES[lang]}.txt").unlink()
    message = _error(folder=folder)
    assert f"missing caption file test_1kcaptions_{XTD_FILE_CODES[lang]}.txt (language {lang})" in message


def test_caption_files_of_unequal_length(small):
    folder, _ = small
    path = folder / "test_1kcaptions_fr.txt"
    path.write_text("\n".join(path.read_text(encoding="utf-8").splitlines()[:-1]) + "\n", encoding="utf-8")
    assert "test_1kcaptions_fr.txt has 5 captions but test_image_names.txt lists 6 images" in _error(folder=folder)


def test_missing_images_are_an_error(small):
    folder, _ = small
    for i in (1, 4):
        (folder / "images" / f"img_{i}.png").unlink()
    message = _error(folder=folder)
    assert "2 of 6 images listed in test_image_names.txt are missing" in message
    assert "(first: img_1.png, img_4.png)" in message and "allow_missing_images=True" in message


def test_missing_images_allowed_drop_rows_consistently(small):
    folder, data = small
    for i in (1, 4):
        (folder / "images" / f"img_{i}.png").unlink()
    loaded = load_xtd(folder, allow_missing_images=True)
    kept = [0, 2, 3, 5]
    assert loaded.names == [f"img_{i}.png" for i in kept]
    assert loaded.captions == [data.captions[i] for i in kept]
    assert torch.equal(loaded.images, data.images[kept])
    assert loaded.skipped["missing_images"] == 2


def test_missing_images_folder(small):
    folder, _ = small
    shutil.rmtree(folder / "images")
    assert "images folder not found" in _error(folder=folder)


def _corrupt(folder: Path, how: str) -> None:
    path = folder / "images" / "img_3.png"
    if how == "garbage":
        path.write_bytes(b"not an image at all")
    else:  # truncated: a valid header, half the data
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_unreadable_image_skipped(small, how):
    folder, data = small
    _corrupt(folder, how)
    loaded = load_xtd(folder)
    assert "img_3.png" not in loaded.names and len(loaded) == N - 1
    assert loaded.skipped["unreadable_images"] == 1
    assert loaded.captions == [c for i, c in enumerate(data.captions) if i != 3]


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_unreadable_image_error(small, how):
    folder, _ = small
    _corrupt(folder, how)
    assert "unreadable image img_3.png" in _error(folder=folder, unreadable_policy="error")


def test_images_of_different_sizes_need_image_size(small):
    folder, _ = small
    Image.new("RGB", (10, 8)).save(folder / "images" / "img_2.png")
    assert "images differ in size (img_2.png is 10x8, most are 8x8); pass image_size" in _error(folder=folder)
    assert tuple(load_xtd(folder, image_size=8).images.shape) == (N, 3, 8, 8)


def test_duplicate_image_names(small):
    folder, _ = small
    path = folder / "test_image_names.txt"
    path.write_text(path.read_text(encoding="utf-8").replace("img_1.png", "img_0.png"), encoding="utf-8")
    assert "lists 1 image name(s) twice, e.g. img_0.png" in _error(folder=folder)


def test_bad_arguments(small):
    folder, _ = small
    assert "unreadable_policy='ignore'" in _error(folder=folder, unreadable_policy="ignore")
    assert "languages: unknown language code 'xx'" in _error(folder=folder, languages=["en", "xx"])


# --------------------------------------------------------------------------- real XTD10 caption files
def _place_images(root: Path, names: list[str], coco: bool) -> None:
    """8x8 JPEG placeholders; image i is a flat colour encoding i (R = i % 256, G = 40 * (i // 256))."""
    for i, name in enumerate(names):
        sub = ("train2014" if "train2014" in name else "val2014") if coco else ""
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i % 256, 40 * (i // 256), 128)).save(root / sub / name, quality=95)


@pytest.fixture(scope="module")
def real_xtd(tmp_path_factory) -> Path:
    """The real XTD10 caption files copied into a temp folder (never into the project)."""
    if not (XTD10 / "test_image_names.txt").is_file():
        pytest.skip(f"real XTD10 caption files not found in {XTD10.name}/ next to the repository (shared/xtd10)")
    folder = tmp_path_factory.mktemp("xtd10")
    for path in XTD10.glob("test_*.txt"):
        shutil.copyfile(path, folder / path.name)
    return folder


def _raw_lines(name: str) -> list[str]:
    return (XTD10 / name).read_bytes().decode("utf-8").splitlines()


@pytest.mark.parametrize("layout", ["coco", "flat"])
def test_real_xtd10(real_xtd, tmp_path, layout):
    names = _raw_lines("test_image_names.txt")
    images = tmp_path / "coco" if layout == "coco" else real_xtd / "images"
    shutil.rmtree(real_xtd / "images", ignore_errors=True)
    _place_images(images, names, coco=layout == "coco")
    data = load_xtd(real_xtd, images if layout == "coco" else None, image_size=8)
    assert len(data) == 1000 and data.names == names
    assert data.languages() == LANGUAGES and data.caption_counts() == {lang: 1000 for lang in LANGUAGES}
    for lang in LANGUAGES:
        raw = [line.strip() for line in _raw_lines(f"test_1kcaptions_{XTD_FILE_CODES[lang]}.txt")]
        assert [row[lang] for row in data.captions] == raw
    assert not any("\r" in c or "\n" in c for row in data.captions for c in row.values())
    assert data.captions[0]["de"].startswith("Oberliga Basketball Spiel")
    assert data.captions[-1]["es"] == _raw_lines("test_1kcaptions_es.txt")[-1].strip()  # no final newline there
    red = data.images[:, 0].float().mean(dim=(1, 2))
    assert torch.all((red - torch.arange(1000) % 256).abs() < 8)  # rows stay in image-list order
    assert data.skipped == {"missing_images": 0, "unreadable_images": 0, "empty_captions": 0}


def test_real_xtd10_missing_val_folder(real_xtd, tmp_path):
    names = _raw_lines("test_image_names.txt")
    _place_images(tmp_path / "coco", names, coco=True)
    shutil.rmtree(tmp_path / "coco" / "val2014")
    message = _error(folder=real_xtd, images_dir=tmp_path / "coco")
    assert "200 of 1000 images listed in test_image_names.txt are missing" in message
    assert "(first: COCO_val2014_" in message
    data = load_xtd(real_xtd, tmp_path / "coco", allow_missing_images=True, image_size=8)
    assert len(data) == 800 and data.skipped["missing_images"] == 200
    assert all(name.startswith("COCO_train2014_") for name in data.names)


def test_image_name_that_is_a_path_is_refused(tmp_path):
    """A names file must not lead the loader outside the images folder."""
    from trainables.data import DataError
    from trainables.data.xtd import load_xtd
    from trainables.languages import XTD_FILE_CODES

    (tmp_path / "test_image_names.txt").write_text("a.png\n../secret.png\n")
    for code in XTD_FILE_CODES.values():
        (tmp_path / f"test_1kcaptions_{code}.txt").write_text("x\ny\n")
    with pytest.raises(DataError, match=r"line 2: image name '\.\./secret\.png' is a path"):
        load_xtd(tmp_path)

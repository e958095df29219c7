"""Reading and writing image-caption data in the XTD10 folder layout.

Layout (real XTD10, or the synthetic test split)::

    folder/test_image_names.txt          one image file name per line
    folder/test_1kcaptions_{code}.txt    line i: caption of image i; codes from XTD_FILE_CODES
                                         (``jp`` for Japanese)
    folder/images/                       the images: flat, or COCO-2014 style with
                                         train2014/ and val2014/ subfolders

Real XTD10 files mix CRLF and LF line endings and some lack a final newline; lines are
split on CR LF, CR or LF only. Every problem raises :class:`DataError` with one line
naming the file or folder and what is wrong.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import BinaryIO, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from trainables.data.types import DataError, ImageCaptionSet
from trainables.languages import LANGUAGES, XTD_FILE_CODES, canonical_language

NAMES_FILE = "test_image_names.txt"
COCO_SUBFOLDERS = ("train2014", "val2014")
UNREADABLE_POLICIES = ("skip", "error")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)

PathLike = Union[str, os.PathLike]


def caption_file_name(lang: str) -> str:
    """XTD10 file name of ``lang``'s captions, e.g. ``test_1kcaptions_jp.txt`` for ``ja``."""
    return f"test_1kcaptions_{XTD_FILE_CODES[canonical_language(lang)]}.txt"


def read_lines(path: Path) -> list[str]:
    """Lines of a UTF-8 text file (BOM dropped), split on CR LF / CR / LF; no trailing empty line.

    Unlike ``str.splitlines`` it does not split on Unicode separators that may sit inside a caption.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path.name} is not valid UTF-8 (byte {err.start}): {path}") from None
    lines = _LINE_BREAK.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


def _read_names(folder: Path) -> list[str]:
    path = folder / NAMES_FILE
    if not path.is_file():
        raise DataError(f"missing {NAMES_FILE} in XTD folder {folder}")
    names = [line.strip() for line in read_lines(path)]
    if not names:
        raise DataError(f"{NAMES_FILE} lists no images: {path}")
    if "" in names:
        raise DataError(f"{NAMES_FILE} line {names.index('') + 1} is empty: {path}")
    dupes = [name for name, count in Counter(names).items() if count > 1]
    if dupes:
        raise DataError(f"{NAMES_FILE} lists {len(dupes)} image name(s) twice, e.g. {', '.join(dupes[:3])}: {path}")
    # An image name is a file name, never a path: the loader must not be led outside the images folder.
    unsafe = [name for name in names if "/" in name or "\\" in name or name in (".", "..")]
    if unsafe:
        raise DataError(f"{NAMES_FILE} line {names.index(unsafe[0]) + 1}: image name {unsafe[0]!r} is a path, "
                        f"not a file name (names must not lead outside the images folder): {path}")
    return names


def _resolve_languages(languages: Optional[Sequence[str]]) -> tuple[str, ...]:
    if languages is None:
        return LANGUAGES
    if isinstance(languages, str):
        languages = [x for x in languages.split(",") if x.strip()]
    try:
        return tuple(dict.fromkeys(canonical_language(x) for x in languages))
    except ValueError as err:
        raise DataError(f"languages: {err}") from None


def _read_captions(folder: Path, langs: Sequence[str], n: int) -> tuple[list[dict[str, str]], int]:
    """Per-row captions of ``langs`` (each file must have ``n`` lines) and the number of empty ones.

    Captions are stripped; an empty caption is left out of its row's dict.
    """
    rows: list[dict[str, str]] = [{} for _ in range(n)]
    empty = 0
    for lang in langs:
        path = folder / caption_file_name(lang)
        if not path.is_file() and (folder / f"test_1kcaptions_{lang}.txt").is_file():
            path = folder / f"test_1kcaptions_{lang}.txt"  # tolerate the ISO code (ja) as well
        if not path.is_file():
            raise DataError(f"missing caption file {caption_file_name(lang)} (language {lang}) in XTD folder {folder}")
        lines = read_lines(path)
        if len(lines) != n:
            raise DataError(f"{path.name} has {len(lines)} captions but {NAMES_FILE} lists {n} images "
                            f"(line i of each file belongs to image i): {folder}")
        for row, line in zip(rows, lines):
            caption = line.strip()
            if caption:
                row[lang] = caption
            else:
                empty += 1
    return rows, empty


def _locate_images(root: Path, names: Sequence[str]) -> list[Optional[Path]]:
    """Path of each named image in ``root`` or its COCO subfolders (None when absent)."""
    if not root.is_dir():
        raise DataError(f"images folder not found: {root} (expected the images there, flat or in "
                        f"{' and '.join(COCO_SUBFOLDERS)} subfolders; pass images_dir to point elsewhere)")
    index: dict[str, str] = {}
    for sub in ("", *COCO_SUBFOLDERS):
        if (root / sub).is_dir():
            with os.scandir(root / sub) as entries:
                for entry in entries:
                    index.setdefault(entry.name, entry.path)
    found = []
    for name in names:
        path = index.get(name)
        if path is None and ("/" in name or os.sep in name):  # a name with a subfolder
            path = str(root / name) if (root / name).is_file() else None
        found.append(Path(path) if path else None)
    return found


def read_image(path: Union[PathLike, BinaryIO], image_size: Optional[int]) -> np.ndarray:
    """One image (a path or binary file object) as uint8 ``[3, H, W]`` RGB.

    With ``image_size`` it is resized (bicubic, shorter side) and centre-cropped to
    ``image_size`` x ``image_size``. Raises PIL/OS errors (OSError, ValueError, ...) for bad files.
    """
    with Image.open(path) as img:
        if image_size:
            img.draft("RGB", (image_size, image_size))  # JPEG: decode at a reduced scale, still >= size
        img = img.convert("RGB")
    if image_size:
        img = ImageOps.fit(img, (image_size, image_size), method=Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _read_images(paths: Sequence[Optional[Path]], image_size: Optional[int],
                 policy: str) -> tuple[list[int], list[np.ndarray], int]:
    """Rows whose image is present and readable, their arrays, and the number of unreadable ones."""
    rows, arrays, unreadable = [], [], 0
    for i, path in enumerate(paths):
        if path is None:
            continue
        try:
            arrays.append(read_image(path, image_size))
        except _IMAGE_ERRORS as err:
            if policy == "error":
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise DataError(f"unreadable image {path.name} ({reason}): {path}") from None
            unreadable += 1
            continue
        rows.append(i)
    return rows, arrays, unreadable


def _stack(arrays: list[np.ndarray], names: list[str]) -> torch.Tensor:
    shapes = Counter(a.shape for a in arrays)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = next(i for i, a in enumerate(arrays) if a.shape != common)
        raise DataError(f"images differ in size ({names[odd]} is {arrays[odd].shape[2]}x{arrays[odd].shape[1]}, "
                        f"most are {common[2]}x{common[1]}); pass image_size to resize them")
    return torch.from_numpy(np.stack(arrays))


class XtdLayout(NamedTuple):
    """An XTD folder's structure, checked (see :func:`check_xtd`); no image decoded yet."""

    names: list[str]
    captions: list[dict[str, str]]
    empty_captions: int
    images_root: Path
    image_paths: list[Optional[Path]]
    missing: list[str]


def check_xtd(folder: PathLike, images_dir: Optional[PathLike] = None, *, allow_missing_images: bool = False,
              languages: Optional[Sequence[str]] = None) -> XtdLayout:
    """Check an XTD folder's structure without decoding an image; DataError (one line) on the first problem.

    The part of :func:`load_xtd` that needs no pixels: the names file (non-empty, no
    duplicates, file names only), one caption file per language with one UTF-8 line per
    image, and the listed images present in ``images_dir`` (unless ``allow_missing_images``).
    The study CLI runs it before Ray starts, so a broken folder fails once, with the message
    the trials would each have given.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"XTD folder not found: {folder}")
    names = _read_names(folder)
    captions, empty = _read_captions(folder, _resolve_languages(languages), len(names))
    root = Path(images_dir) if images_dir is not None else folder / "images"
    paths = _locate_images(root, names)
    missing = [name for name, path in zip(names, paths) if path is None]
    if missing and not allow_missing_images:
        raise DataError(f"{len(missing)} of {len(names)} images listed in {NAMES_FILE} are missing from {root} "
                        f"(first: {', '.join(missing[:3])}); pass allow_missing_images=True to evaluate "
                        f"on the {len(names) - len(missing)} present ones")
    return XtdLayout(names, captions, empty, root, paths, missing)


def load_xtd(folder: PathLike, images_dir: Optional[PathLike] = None, *, allow_missing_images: bool = False,
             unreadable_policy: str = "skip", image_size: Optional[int] = None,
             languages: Optional[Sequence[str]] = None) -> ImageCaptionSet:
    """Load an XTD10-layout folder into an :class:`ImageCaptionSet`.

    Args:
        folder: folder with ``test_image_names.txt`` and ``test_1kcaptions_{code}.txt`` files.
        images_dir: the images (flat, or with ``train2014/``/``val2014/``); default ``folder/images``.
        allow_missing_images: if False, any listed image absent from ``images_dir`` is an error;
            if True, rows of absent images are dropped (in every language) and counted in
            ``skipped["missing_images"]``.
        unreadable_policy: ``skip`` (drop the row, count ``skipped["unreadable_images"]``) or
            ``error`` (raise naming the file) for images that cannot be decoded.
        image_size: resize every image (bicubic, shorter side, centre crop) to this square size;
            if None all images must already share one size.
        languages: codes to load (``jp`` accepted for ``ja``); default all 11 XTD10 languages.

    Returns:
        Rows in ``test_image_names.txt`` order (minus dropped ones): uint8 images
        ``[N, 3, H, W]``, captions keyed by canonical code (``ja``, not ``jp``), the file names,
        and ``skipped`` = {missing_images, unreadable_images, empty_captions}.
    Raises:
        DataError: one line naming the file/folder and the problem.
    """
    if unreadable_policy not in UNREADABLE_POLICIES:
        raise DataError(f"unreadable_policy={unreadable_policy!r}: must be one of {', '.join(UNREADABLE_POLICIES)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size={image_size!r}: must be a positive integer or None")
    names, captions, empty, root, paths, missing = check_xtd(
        folder, images_dir, allow_missing_images=allow_missing_images, languages=languages)
    rows, arrays, unreadable = _read_images(paths, image_size, unreadable_policy)
    if not rows:
        raise DataError(f"no readable images left in {root} ({len(missing)} missing, {unreadable} unreadable "
                        f"of {len(names)} listed)")
    kept_names = [names[i] for i in rows]
    return ImageCaptionSet(
        images=_stack(arrays, kept_names),
        captions=[captions[i] for i in rows],
        names=kept_names,
        skipped={"missing_images": len(missing), "unreadable_images": unreadable, "empty_captions": empty},
    )


def write_xtd(data: ImageCaptionSet, folder: PathLike, languages: Optional[Sequence[str]] = None) -> Path:
    """Write ``data`` to ``folder`` in XTD10 layout (LF line ends, final newline, UTF-8).

    Images go to ``folder/images/<name>`` in the format the name's extension says (use
    ``.png`` for lossless round trips). Every row needs a one-line caption in each of
    ``languages`` (default: ``data.languages()``). Returns ``folder``.
    """
    folder = Path(folder)
    langs = _resolve_languages(languages) if languages is not None else data.languages()
    for lang in langs:
        lacking = [name for name, row in zip(data.names, data.captions) if not row.get(lang)]
        if lacking:
            raise DataError(f"cannot write XTD: {len(lacking)} image(s) lack a {lang} caption, e.g. {lacking[0]}")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    _write_lines(folder / NAMES_FILE, data.names)
    for lang in langs:
        _write_lines(folder / caption_file_name(lang), [row[lang] for row in data.captions])
    for name, image in zip(data.names, data.images.numpy()):
        Image.fromarray(image.transpose(1, 2, 0)).save(folder / "images" / name, compress_level=1)
    return folder


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    if any(_LINE_BREAK.search(line) for line in lines):
        raise DataError(f"cannot write {path.name}: an entry contains a line break")
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", newline="\n")

"""Synthetic multilingual image-caption pairs: the project's offline default data.

Each image shows 1-3 coloured shapes (colour, shape, size, position from the small
vocabularies of :mod:`trainables.data.grammars`) on a tinted, noisy background, with
continuous jitter of hue, size, placement and rotation. Its caption (the same mentions in
all 11 XTD10 languages, a paraphrase template drawn per language) names the shapes' colour
and shape, and only sometimes their size and position; a 3-shape scene sometimes leaves one
shape out. Captions therefore do not pin down their image: many test images share a
caption, so retrieval leaves room between chance and 1.0.

Every sample is drawn from its own random stream keyed by ``(seed, split, index, attempt)``,
so output is deterministic and the train and test splits never share a stream; a sample whose
rendered image equals an earlier one (either split) is drawn again with the next attempt.

:func:`load_synthetic` caches both splits on disk (train: ``train.npz``; test: XTD10 layout),
in a folder keyed by a hash of the generation parameters, written atomically.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from trainables.atomic import atomic_folder
from trainables.config import TrialConfig
from trainables.data.grammars import COLOURS, POSITIONS, SHAPES, SIZES, Mention, render_caption, template_count
from trainables.data.types import ImageCaptionSet
from trainables.data.xtd import write_xtd
from trainables.languages import LANGUAGES

GENERATOR_VERSION = 1
SPLIT_IDS = {"train": 0, "test": 1}

# (hue, saturation, value) of each colour, before jitter
_HSV = {"red": (0.0, 0.85, 0.85), "orange": (0.08, 0.9, 0.95), "yellow": (0.155, 0.85, 0.92),
        "green": (0.33, 0.75, 0.65), "blue": (0.62, 0.8, 0.85), "purple": (0.78, 0.65, 0.7),
        "black": (0.0, 0.0, 0.1), "white": (0.0, 0.0, 0.95)}
_CENTRES = {"left": (0.27, 0.5), "right": (0.73, 0.5), "top": (0.5, 0.27), "bottom": (0.5, 0.73),
            "centre": (0.5, 0.5)}
_RADIUS = {"small": (0.09, 0.13), "large": (0.17, 0.23)}  # fraction of the image side
_N_SHAPES_P = (0.3, 0.4, 0.3)  # probability of 1, 2, 3 shapes
_P_SIZE, _P_POSITION, _P_OMIT = 0.65, 0.5, 0.25  # mention size / position; leave one of 3 shapes out


@dataclass(frozen=True)
class Shape:
    """One drawn shape: concept attributes plus continuous geometry (fractions of the side)."""

    shape: str
    colour: str
    size: str
    position: str
    rgb: tuple[int, int, int]
    cx: float
    cy: float
    radius: float
    angle: float  # radians


def _stream(seed: int, split: str, index: int, attempt: int) -> np.random.Generator:
    """The random stream of one sample (independent per split, index and attempt)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, SPLIT_IDS[split], index, attempt])


def _jitter_colour(rng: np.random.Generator, colour: str) -> tuple[int, int, int]:
    h, s, v = _HSV[colour]
    if colour in ("black", "white"):
        s, v = rng.uniform(0.0, 0.08), v + rng.uniform(-0.08, 0.05)
    else:
        h, s, v = h + rng.uniform(-0.025, 0.025), s * rng.uniform(0.8, 1.1), v * rng.uniform(0.85, 1.05)
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(s, 1.0), float(np.clip(v, 0.0, 1.0)))
    return int(r * 255), int(g * 255), int(b * 255)


def sample_scene(rng: np.random.Generator) -> list[Shape]:
    """1-3 shapes at distinct positions, each with random attributes and continuous jitter."""
    n = int(rng.choice(3, p=_N_SHAPES_P)) + 1
    shapes = []
    for pos_index in rng.choice(len(POSITIONS), size=n, replace=False):
        position = POSITIONS[int(pos_index)]
        colour, shape = COLOURS[rng.integers(len(COLOURS))], SHAPES[rng.integers(len(SHAPES))]
        size = SIZES[rng.integers(len(SIZES))]
        x, y = _CENTRES[position]
        shapes.append(Shape(shape, colour, size, position, _jitter_colour(rng, colour),
                            x + rng.uniform(-0.06, 0.06), y + rng.uniform(-0.06, 0.06),
                            rng.uniform(*_RADIUS[size]), rng.uniform(-0.3, 0.3)))
    return shapes


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices (canvas pixels) of a polygonal shape centred at (cx, cy) with radius r."""
    if shape == "square":
        radii, base = [r * 1.13] * 4, angle + math.pi / 4
    elif shape == "triangle":
        radii, base = [r * 1.2] * 3, angle - math.pi / 2
    elif shape == "star":
        radii, base = [r * 1.2, r * 0.5] * 5, angle - math.pi / 2
    else:  # diamond: a rhombus, taller than wide
        radii, base = [r * 1.25, r * 0.75] * 2, angle - math.pi / 2
    step = 2 * math.pi / len(radii)
    return [(cx + rad * math.cos(base + k * step), cy + rad * math.sin(base + k * step))
            for k, rad in enumerate(radii)]


def render_scene(shapes: list[Shape], rng: np.random.Generator, image_size: int) -> np.ndarray:
    """Render ``shapes`` on a tinted background with pixel noise -> uint8 ``[3, S, S]`` (RGB).

    Drawn on a supersampled canvas and box-downsampled for anti-aliasing; large shapes first.
    """
    factor = max(1, min(4, 128 // image_size))
    side = image_size * factor
    bg = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.0, 0.2), rng.uniform(0.3, 0.65))
    canvas = Image.new("RGB", (side, side), tuple(int(c * 255) for c in bg))
    draw = ImageDraw.Draw(canvas)
    for s in sorted(shapes, key=lambda s: -s.radius):
        cx, cy, r = s.cx * side, s.cy * side, s.radius * side
        if s.shape in ("circle", "ring"):
            width = max(1, round(r * 0.4)) if s.shape == "ring" else 0
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=None if width else s.rgb,
                         outline=s.rgb if width else None, width=width)
        else:
            draw.polygon(_polygon(s.shape, cx, cy, r, s.angle), fill=s.rgb)
    if factor > 1:
        canvas = canvas.reduce(factor)
    pixels = np.asarray(canvas, dtype=np.int16) + rng.normal(0.0, rng.uniform(2.0, 8.0), (image_size, image_size, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def describe(shapes: list[Shape], rng: np.random.Generator) -> dict[str, str]:
    """Captions in every language for one scene: shared mentions, per-language template.

    Mention order is random; size and position are mentioned with probability 0.65 / 0.5 each;
    with probability 0.25 a 3-shape scene's caption leaves one shape out.
    """
    order = [shapes[int(i)] for i in rng.permutation(len(shapes))]
    if len(order) == 3 and rng.uniform() < _P_OMIT:
        order = order[:2]
    mentions = [Mention(s.shape, s.colour, s.size if rng.uniform() < _P_SIZE else None,
                        s.position if rng.uniform() < _P_POSITION else None) for s in order]
    return {lang: render_caption(lang, mentions, int(rng.integers(template_count(lang)))) for lang in LANGUAGES}


def _generate_split(split: str, size: int, image_size: int, seed: int, seen: set[bytes]) -> ImageCaptionSet:
    """``size`` samples of ``split``; redraws a sample whose image digest is in ``seen`` (updated)."""
    images = np.empty((size, 3, image_size, image_size), dtype=np.uint8)
    captions = []
    for index in range(size):
        attempt = 0
        while True:
            rng = _stream(seed, split, index, attempt)
            shapes = sample_scene(rng)
            image = render_scene(shapes, rng, image_size)
            digest = hashlib.blake2b(image.tobytes(), digest_size=16).digest()
            if digest not in seen:
                break
            attempt += 1
        seen.add(digest)
        images[index] = image
        captions.append(describe(shapes, rng))
    names = [f"synthetic_{split}_{i:06d}.png" for i in range(size)]
    return ImageCaptionSet(torch.from_numpy(images), captions, names, {})


def generate_synthetic(train_size: int = 4000, test_size: int = 1000, *, image_size: int = 32,
                       seed: int = 0) -> tuple[ImageCaptionSet, ImageCaptionSet]:
    """Generate the synthetic (train, test) splits in memory, deterministically from ``seed``.

    Returns two :class:`ImageCaptionSet` with uint8 images ``[N, 3, image_size, image_size]``
    and a caption in each of the 11 languages per image. No rendered image occurs twice,
    within or across the splits (test images are drawn after, and checked against, train).
    """
    if train_size < 0 or test_size < 0 or image_size < 8:
        raise ValueError(f"need sizes >= 0 and image_size >= 8; got {train_size}, {test_size}, {image_size}")
    seen: set[bytes] = set()
    train = _generate_split("train", train_size, image_size, seed, seen)
    return train, _generate_split("test", test_size, image_size, seed, seen)


# --------------------------------------------------------------------------- on-disk cache
def cache_root(config: TrialConfig) -> Path:
    """``config.data_cache`` or ``~/.cache/mlclip-study``."""
    return Path(config.data_cache).expanduser() if config.data_cache else Path.home() / ".cache" / "mlclip-study"


def _params(config: TrialConfig) -> dict:
    return {"train_size": config.synthetic_train_size, "test_size": config.synthetic_test_size,
            "image_size": config.image_size, "data_seed": config.data_seed, "version": GENERATOR_VERSION}


def synthetic_cache_dir(config: TrialConfig) -> Path:
    """Cache folder of ``config``'s synthetic data: ``<cache_root>/synthetic-<hash of parameters>``."""
    key = hashlib.sha256(json.dumps(_params(config), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(config) / f"synthetic-{key}"


# The cached splits take at least this share of their raw pixel bytes: the images carry pixel noise,
# so neither the compressed train.npz nor the test PNGs shrink much (measured: 0.86-1.04 and
# 0.73-0.86 of the raw pixels at 16 and 32 px); half leaves room to spare (a test holds it).
CACHE_FLOOR_SHARE = 0.5


def cache_bytes_floor(config: TrialConfig) -> int:
    """A lower bound of the bytes that generating ``config``'s synthetic data set writes into the
    data cache (0 when it is cached already): :data:`CACHE_FLOOR_SHARE` of its raw pixels. The
    corpus tokenizer and the tokenised set written after it come on top."""
    if (synthetic_cache_dir(config) / "train.npz").exists():
        return 0
    pixels = (config.synthetic_train_size + config.synthetic_test_size) * 3 * config.image_size ** 2
    return int(pixels * CACHE_FLOOR_SHARE)


def _save_train(data: ImageCaptionSet, path: Path) -> None:
    meta = json.dumps({"captions": data.captions, "names": data.names}, ensure_ascii=False).encode("utf-8")
    np.savez_compressed(path, images=data.images.numpy(), meta=np.frombuffer(meta, dtype=np.uint8))


def _load_train(path: Path) -> ImageCaptionSet:
    with np.load(path, allow_pickle=False) as arrays:
        meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
        images = torch.from_numpy(arrays["images"])
    return ImageCaptionSet(images, meta["captions"], meta["names"], {})


def _build_cache(config: TrialConfig, folder: Path) -> None:
    """Generate the data set into ``folder``, atomically; if another process built it first,
    ours is discarded (both are identical: generation is deterministic)."""

    def write(tmp: Path) -> None:
        train, test = generate_synthetic(config.synthetic_train_size, config.synthetic_test_size,
                                         image_size=config.image_size, seed=config.data_seed)
        _save_train(train, tmp / "train.npz")
        write_xtd(test, tmp / "test")
        (tmp / "params.json").write_text(json.dumps(_params(config), indent=1) + "\n")

    atomic_folder(folder, write, done="train.npz")


def load_synthetic(config: TrialConfig) -> tuple[ImageCaptionSet, Path]:
    """The synthetic train split (in memory) and the folder of the test split (XTD10 layout).

    Generated once per parameter set (``synthetic_train_size``, ``synthetic_test_size``,
    ``image_size``, ``data_seed``, generator version) into :func:`synthetic_cache_dir` and
    reused afterwards; safe when several processes ask at once. Languages: all 11.
    """
    folder = synthetic_cache_dir(config)
    if not (folder / "train.npz").exists():
        _build_cache(config, folder)
    return _load_train(folder / "train.npz"), folder / "test"

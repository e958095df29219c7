"""Data commands: fetch the XTD10 benchmark, and build WebDataset training shards.

::

    python -m study.data xtd10 --dest DIR
    python -m study.data shards --from-manifest corpus.jsonl --dest shards/ [--per-shard 1000]
    python -m study.data shards --from-xtd FOLDER [--images DIR] --dest shards/

``xtd10`` fetches the caption files and LICENSE of XTD10 at a pinned commit (size and
sha256 checked against the values embedded below) and the 1000-image archive that LAION's
CLIP_benchmark uses, extracted to ``DIR/images`` (every listed image must be there after
extraction). Downloads resume (HTTP Range into ``NAME.part``), and a second run finds
everything in place and fetches nothing. Offline it stops with one line saying what to
download and where to put it. Afterwards: ``eval_data=DIR`` (images default to ``DIR/images``).

The XTD10 data is under the Adobe Research License (noncommercial research only); its
``LICENSE.md`` is fetched next to the data.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from trainables.atomic import atomic_file
from trainables.data.corpora import iter_manifest
from trainables.data.shards import ShardWriter
from trainables.data.types import DataError
from trainables.data.xtd import _locate_images, _read_captions, _read_names, caption_file_name
from trainables.languages import LANGUAGES

XTD10_REPO = "adobe-research/Cross-lingual-Test-Dataset-XTD10"
XTD10_COMMIT = "d77ff16148468c84287f3efcbf602a015c5e4954"
XTD10_BASE_URL = f"https://raw.githubusercontent.com/{XTD10_REPO}/{XTD10_COMMIT}"
XTD10_IMAGES_URL = "https://nllb-data.com/test/xtd10/images.tar.gz"  # as in LAION's CLIP_benchmark
XTD10_IMAGES_SHA256: Optional[str] = None  # not pinned: no offline copy to hash; pass --images-sha256
IMAGES_ARCHIVE = "images.tar.gz"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download failed or its content is wrong. One-line message."""


class OfflineError(DownloadError):
    """The server cannot be reached at all (no network, DNS failure, connection refused)."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to fetch: its name under the destination, its path below the base URL, size and sha256."""

    name: str
    path: str
    size: Optional[int] = None
    sha256: Optional[str] = None


# Sizes and sha256 of the files at XTD10_COMMIT (byte-identical copies were hashed).
XTD10_FILES: tuple[RemoteFile, ...] = (
    RemoteFile("LICENSE.md", "LICENSE.md", 3632, "f9908a6ae7d75e49452013687f4db397b035d7bb69f3975961eb739e878a83bf"),
    RemoteFile("test_image_names.txt", "XTD10/test_image_names.txt", 31600,
               "504a472dfd40e44f2d0facd6320b9dc1c7d64c58aac9840f0b1da4807cb3a30a"),
    RemoteFile("test_1kcaptions_de.txt", "MIC/test_1kcaptions_de.txt", 75593,
               "51f1e9fe05d85b7cd33543676ed2fea51b05399cc403a5fca557ca7ecdb9a207"),
    RemoteFile("test_1kcaptions_en.txt", "XTD10/test_1kcaptions_en.txt", 65828,
               "ac5531b6842c1d469fba80aa6f44e2af054e84a41da8f9eaf01d831e943039b9"),
    RemoteFile("test_1kcaptions_es.txt", "XTD10/test_1kcaptions_es.txt", 66315,
               "cacc43d4e7af56b02033865531ea70494049f1d0dd3ea89ff2a217e7e190c4f2"),
    RemoteFile("test_1kcaptions_fr.txt", "MIC/test_1kcaptions_fr.txt", 79287,
               "84aa16954706a0f654b59788ffb6a3bcb1b1d9d12dc9d7a3de26730bc04664b5"),
    RemoteFile("test_1kcaptions_it.txt", "XTD10/test_1kcaptions_it.txt", 65178,
               "b4095d3550eb1accf8c9c78314b4bef45847a3929b5c5fe15a1264ea31dec7cc"),
    RemoteFile("test_1kcaptions_jp.txt", "STAIR/test_1kcaptions_jp.txt", 63028,
               "20908aa5763ee7b1bacc1f29aa507532d3dc6a7e6a8c43e6acd2ec72d1e80c10"),
    RemoteFile("test_1kcaptions_ko.txt", "XTD10/test_1kcaptions_ko.txt", 70124,
               "92d35e082cd081724560c9abdb2b45753ceb52aaabddb9a0f79dc04967a36800"),
    RemoteFile("test_1kcaptions_pl.txt", "XTD10/test_1kcaptions_pl.txt", 66605,
               "b6af6b7941f44e902b50736dcf9a7221af28e755a259511652c599cf6ae89c78"),
    RemoteFile("test_1kcaptions_ru.txt", "XTD10/test_1kcaptions_ru.txt", 95035,
               "7d93631ff85b53592091b3cbfd9ca963397e77038fb3d0fdd9374b1b02ae98a3"),
    RemoteFile("test_1kcaptions_tr.txt", "XTD10/test_1kcaptions_tr.txt", 71756,
               "147e9763dcb6e6ebba0b98fc799f0145c7d90005fa03ca8ec5a7cf29a04dd136"),
    RemoteFile("test_1kcaptions_zh.txt", "XTD10/test_1kcaptions_zh.txt", 58660,
               "17229ff02ac85dd2d165f8316515a24fbe5100dbf486c22aaa12105dfb3353bf"),
)


# ---------------------------------------------------------------------------
# resumable, checked downloads
# ---------------------------------------------------------------------------
def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _matches(path: Path, size: Optional[int], sha256: Optional[str]) -> bool:
    if size is not None and path.stat().st_size != size:
        return False
    return sha256 is None or sha256_of(path) == sha256


def _transfer(url: str, part: Path, size: Optional[int], timeout: float) -> None:
    """Fetch what is missing of ``url`` into ``part`` (HTTP Range from its current length)."""
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        if have > size:
            part.unlink()  # longer than the real file: start again
            have = 0
        else:
            return
    headers = {"User-Agent": "mlclip-study", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:
            return  # nothing past what we hold: the checks decide
        raise
    with response:
        resumed = have and response.status == 206 and \
            response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        expected = response.headers.get("Content-Length")
        written = 0
        with part.open("ab" if resumed else "wb") as out:
            for block in iter(lambda: response.read(CHUNK), b""):
                out.write(block)
                written += len(block)
        if expected is not None and written != int(expected):
            raise http.client.IncompleteRead(b"", int(expected) - written)


def fetch(url: str, dest: Path, *, size: Optional[int] = None, sha256: Optional[str] = None,
          retries: int = 3, retry_wait: float = 2.0, timeout: float = 60.0,
          log: Callable[[str], None] = print) -> bool:
    """Download ``url`` to ``dest`` unless a file matching ``size``/``sha256`` is already there.

    Resumes from ``dest.part``; retries broken transfers ``retries`` times; checks size and
    sha256 before renaming ``.part`` to ``dest``. Returns True when something was fetched.
    Raises :class:`OfflineError` when the host cannot be reached, :class:`DownloadError` otherwise.
    """
    if dest.is_file() and _matches(dest, size, sha256):
        return False
    if dest.is_file():
        log(f"{dest.name}: present but its size/checksum is wrong; fetching it again")
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        try:
            _transfer(url, part, size, timeout)
            break
        except urllib.error.HTTPError as err:
            if err.code < 500 or attempt == retries:
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:  # could not connect at all: no use retrying
            raise OfflineError(f"cannot reach {urllib.parse.urlsplit(url).netloc} ({err.reason})") from None
        except (OSError, http.client.HTTPException) as err:  # broken transfer: resume
            if attempt == retries:
                raise DownloadError(f"{url}: download broke off {retries + 1} times ({type(err).__name__}); "
                                    f"run again to resume from {part}") from None
        held = part.stat().st_size if part.exists() else 0
        log(f"{dest.name}: transfer interrupted at {held} bytes; resuming")
        time.sleep(retry_wait * (attempt + 1))
    _verify(part, url, size, sha256)
    os.replace(part, dest)
    return True


def _verify(part: Path, url: str, size: Optional[int], sha256: Optional[str]) -> None:
    actual = part.stat().st_size
    if size is not None and actual != size:
        part.unlink()
        raise DownloadError(f"{url}: got {actual} bytes, expected {size}; the partial file was removed")
    if sha256 is not None:
        digest = sha256_of(part)
        if digest != sha256:
            part.unlink()
            raise DownloadError(f"{url}: sha256 {digest} does not match the expected {sha256}; "
                                "the download was removed")


# ---------------------------------------------------------------------------
# XTD10
# ---------------------------------------------------------------------------
def _listed_images(dest: Path) -> list[str]:
    text = (dest / "test_image_names.txt").read_text(encoding="utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _missing_images(images_dir: Path, names: Sequence[str]) -> list[str]:
    present = set()
    for sub in ("", "train2014", "val2014"):
        if (images_dir / sub).is_dir():
            present.update(p.name for p in (images_dir / sub).iterdir())
    return [name for name in names if name not in present]


def _extract_images(archive: Path, images_dir: Path, names: Sequence[str]) -> None:
    """Extract the listed images from ``archive`` (any folder depth) flat into ``images_dir``."""
    wanted = set(names)
    images_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar:
                base = Path(member.name).name
                if member.isfile() and base in wanted:
                    with atomic_file(images_dir / base) as out:
                        shutil.copyfileobj(tar.extractfile(member), out)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DownloadError(f"{archive} is not a readable tar archive ({err}); delete it and run again") from None


def fetch_xtd10(dest: Path, *, base_url: str = XTD10_BASE_URL, images_url: str = XTD10_IMAGES_URL,
                images_sha256: Optional[str] = XTD10_IMAGES_SHA256, files: Sequence[RemoteFile] = XTD10_FILES,
                with_images: bool = True, keep_archive: bool = False, retry_wait: float = 2.0,
                log: Callable[[str], None] = print) -> Path:
    """Fetch XTD10 into ``dest`` (captions + LICENSE flat, images in ``dest/images``); idempotent."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in files:
        if fetch(f"{base_url.rstrip('/')}/{item.path}", dest / item.name, size=item.size, sha256=item.sha256,
                 retry_wait=retry_wait, log=log):
            log(f"fetched {item.name}")
    if not with_images:
        return dest
    names, images_dir = _listed_images(dest), dest / "images"
    if not _missing_images(images_dir, names):
        log(f"all {len(names)} images present in {images_dir}")
        return dest
    archive = dest / IMAGES_ARCHIVE
    fetch(images_url, archive, sha256=images_sha256, retry_wait=retry_wait, log=log)
    log(f"{IMAGES_ARCHIVE}: sha256 {sha256_of(archive)}" + ("" if images_sha256 else " (not pinned)"))
    _extract_images(archive, images_dir, names)
    missing = _missing_images(images_dir, names)
    if missing:
        raise DownloadError(f"{len(missing)} of {len(names)} listed images are not in {archive} "
                            f"(first: {', '.join(missing[:3])})")
    if not keep_archive:
        archive.unlink()
    log(f"extracted {len(names)} images into {images_dir}")
    return dest


def offline_hint(dest: Path, base_url: str = XTD10_BASE_URL, images_url: str = XTD10_IMAGES_URL) -> str:
    """The one line that says what to download and where to put it."""
    return (f"offline: download test_image_names.txt, test_1kcaptions_{{de,en,es,fr,it,jp,ko,pl,ru,tr,zh}}.txt and "
            f"LICENSE.md from {base_url}/ (XTD10/, MIC/ for de fr, STAIR/ for jp) into {dest}/, and "
            f"{images_url} extracted into {dest}/images/; then run this command again to check them")


# ---------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------
@dataclass
class Conversion:
    """Outcome of a shard conversion: the shards written and the samples left out."""

    shards: list
    samples: int
    missing_images: int = 0
    unreadable_images: int = 0


def _image_bytes(path: Path) -> Optional[bytes]:
    """The file's bytes if PIL can parse it as an image, else None."""
    from PIL import Image

    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()
    except Exception:  # noqa: BLE001 - any parse failure means unreadable
        return None
    return data


def _manifest_samples(manifest: Path) -> Iterator[tuple[str, Optional[Path], dict]]:
    for entry, _ in iter_manifest(manifest):
        yield entry.name, entry.image, entry.captions


def _xtd_samples(folder: Path, images_dir: Optional[Path]) -> Iterator[tuple[str, Optional[Path], dict]]:
    """(name, image path or None, captions) of an XTD-layout folder, in every language it has a file for."""
    names = _read_names(folder)
    langs = [lang for lang in LANGUAGES if (folder / caption_file_name(lang)).is_file()
             or (folder / f"test_1kcaptions_{lang}.txt").is_file()]
    if not langs:
        raise DataError(f"no test_1kcaptions_*.txt caption files in {folder}")
    captions, _ = _read_captions(folder, langs, len(names))
    paths = _locate_images(images_dir or folder / "images", names)
    for name, path, row in zip(names, paths, captions):
        if row:
            yield name, path, row


def convert_to_shards(samples: Iterator[tuple[str, Optional[Path], dict]], dest: Path, *,
                      per_shard: int = 1000, prefix: str = "shard") -> Conversion:
    """Write (name, image path, captions) samples as shards; missing/unreadable images are skipped and counted."""
    result = Conversion(shards=[], samples=0)
    with ShardWriter(dest, per_shard=per_shard, prefix=prefix) as writer:
        for name, path, captions in samples:
            if path is None or not path.is_file():
                result.missing_images += 1
                continue
            data = _image_bytes(path)
            if data is None:
                result.unreadable_images += 1
                continue
            ext = path.suffix.lower().lstrip(".") or "jpg"
            writer.add(f"{result.samples:09d}", data, ext, captions)
            result.samples += 1
    result.shards = writer.paths
    return result


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    xtd = sub.add_parser("xtd10", help="fetch XTD10 captions, LICENSE and images")
    xtd.add_argument("--dest", required=True, type=Path)
    xtd.add_argument("--no-images", action="store_true", help="captions and LICENSE only")
    xtd.add_argument("--keep-archive", action="store_true", help="keep images.tar.gz after extraction")
    xtd.add_argument("--images-sha256", default=XTD10_IMAGES_SHA256, help="expected sha256 of the image archive")
    xtd.add_argument("--base-url", default=XTD10_BASE_URL, help="mirror of the caption files")
    xtd.add_argument("--images-url", default=XTD10_IMAGES_URL, help="mirror of the image archive")
    shards = sub.add_parser("shards", help="build WebDataset shards from a manifest or an XTD-layout folder")
    source = shards.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-manifest", type=Path, help="a JSONL manifest")
    source.add_argument("--from-xtd", type=Path, help="an XTD-layout folder (per-language caption files)")
    shards.add_argument("--images", type=Path, help="images of --from-xtd (default FOLDER/images)")
    shards.add_argument("--dest", required=True, type=Path)
    shards.add_argument("--per-shard", type=int, default=1000)
    shards.add_argument("--prefix", default="shard")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m study.data``; errors are one line on stderr, exit code 2."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "xtd10":
            fetch_xtd10(args.dest, base_url=args.base_url, images_url=args.images_url,
                        images_sha256=args.images_sha256, with_images=not args.no_images,
                        keep_archive=args.keep_archive)
            print(f"XTD10 ready in {args.dest} (eval_data={args.dest})")
            return 0
        samples = (_manifest_samples(args.from_manifest) if args.from_manifest
                   else _xtd_samples(args.from_xtd, args.images))
        done = convert_to_shards(samples, args.dest, per_shard=args.per_shard, prefix=args.prefix)
        print(f"wrote {done.samples} samples in {len(done.shards)} shard(s) to {args.dest}; skipped "
              f"{done.missing_images} missing and {done.unreadable_images} unreadable image(s)")
        return 0
    except OfflineError as err:
        print(offline_hint(args.dest, args.base_url, args.images_url) + f" [{err}]", file=sys.stderr)
        return 2
    except (DownloadError, DataError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

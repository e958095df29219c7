"""`python -m study.data`: checked, resumable, idempotent downloads (against a local HTTP server)
and the shard converter."""

import hashlib
import io
import json
import socket
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from study.data import XTD10_FILES, DownloadError, RemoteFile, fetch, fetch_xtd10, main
from trainables.data.shards import load_shards
from trainables.data.types import ImageCaptionSet
from trainables.data.xtd import write_xtd
from trainables.languages import XTD_FILE_CODES

NAMES = ["COCO_train2014_000000000001.jpg", "COCO_val2014_000000000002.jpg", "COCO_train2014_000000000003.jpg"]


def jpeg(i: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (12, 9), (40 * i, 90, 10)).save(out, format="JPEG")
    return out.getvalue()


def images_archive(names) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for i, name in enumerate(names):
            data = jpeg(i) + b"\0" * 3000  # big enough to break off in the middle
            info = tarfile.TarInfo(f"images/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


class FakeServer:
    """Serves ``files`` on 127.0.0.1 with HTTP Range; paths in ``break_first`` break off halfway once."""

    def __init__(self, files, break_first=(), honour_range=True):
        self.files, self.break_first, self.honour_range = dict(files), set(break_first), honour_range
        self.requests = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server API
                server.requests.append((self.path, self.headers.get("Range")))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404)
                    return
                start = 0
                if self.headers.get("Range") and server.honour_range:
                    start = int(self.headers["Range"].split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.path in server.break_first:
                    server.break_first.discard(self.path)
                    body = body[: len(body) // 2]
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_xtd():
    """Fake XTD10 caption files (names, en, jp), their RemoteFile table and an image archive."""
    contents = {
        "LICENSE.md": b"fake licence\n",
        "test_image_names.txt": "".join(n + "\n" for n in NAMES).encode(),
        "test_1kcaptions_en.txt": b"one\r\ntwo\r\nthree",
        "test_1kcaptions_jp.txt": "一\n二\n三\n".encode(),
    }
    folders = {"test_1kcaptions_jp.txt": "STAIR/"}
    table = [RemoteFile(name, folders.get(name, "XTD10/") + name, len(data), hashlib.sha256(data).hexdigest())
             for name, data in contents.items()]
    served = {f"/base/{item.path}": contents[item.name] for item in table}
    served["/img/images.tar.gz"] = images_archive(NAMES)
    return table, served


def test_fetch_resumes_checks_and_is_idempotent(tmp_path, fake_xtd):
    table, served = fake_xtd
    broken = {"/base/XTD10/test_image_names.txt", "/img/images.tar.gz"}
    with FakeServer(served, break_first=broken) as server:
        kwargs = dict(base_url=f"{server.url}/base", images_url=f"{server.url}/img/images.tar.gz",
                      files=table, retry_wait=0, log=lambda _: None)
        fetch_xtd10(tmp_path, **kwargs)
        resumed = [path for path, rng in server.requests if rng and rng != "bytes=0-"]
        assert sorted(resumed) == sorted(broken)  # each broken download resumed with a Range request
        for item in table:
            assert (tmp_path / item.name).read_bytes() == served[f"/base/{item.path}"]
        assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(NAMES)
        assert not list(tmp_path.glob("*.part")) and not (tmp_path / "images.tar.gz").exists()
        count = len(server.requests)
        fetch_xtd10(tmp_path, **kwargs)  # second run: everything in place, nothing fetched
        assert len(server.requests) == count


def test_server_ignoring_range_restarts_cleanly(tmp_path):
    data = bytes(range(256)) * 40
    with FakeServer({"/f.bin": data}, break_first={"/f.bin"}, honour_range=False) as server:
        assert fetch(f"{server.url}/f.bin", tmp_path / "f.bin", size=len(data),
                     sha256=hashlib.sha256(data).hexdigest(), retry_wait=0, log=lambda _: None)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_checksum_mismatch_is_an_error_and_leaves_nothing(tmp_path):
    with FakeServer({"/f.txt": b"tampered"}) as server:
        with pytest.raises(DownloadError, match="sha256 .* does not match the expected 00"):
            fetch(f"{server.url}/f.txt", tmp_path / "f.txt", sha256="00" * 32, retry_wait=0)
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(f"{server.url}/nope.txt", tmp_path / "nope.txt", retry_wait=0)
    assert list(tmp_path.iterdir()) == []


def test_offline_is_one_clear_line(tmp_path, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = tmp_path / "xtd10"
    code = main(["xtd10", "--dest", str(dest), "--base-url", f"http://127.0.0.1:{port}/x",
                 "--images-url", f"http://127.0.0.1:{port}/images.tar.gz"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("offline: download test_image_names.txt") and f"into {dest}/images/" in err


def test_embedded_xtd10_table():
    assert len(XTD10_FILES) == 13
    by_name = {f.name: f for f in XTD10_FILES}
    for code in XTD_FILE_CODES.values():
        assert f"test_1kcaptions_{code}.txt" in by_name
    assert by_name["test_1kcaptions_jp.txt"].path.startswith("STAIR/")
    assert by_name["test_1kcaptions_de.txt"].path.startswith("MIC/")
    assert all(len(f.sha256) == 64 and f.size > 0 for f in XTD10_FILES)


def test_convert_manifest_and_xtd_folder_to_shards(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.jpg").write_bytes(jpeg(1))
    (tmp_path / "m" / "b.jpg").write_bytes(b"broken")
    lines = [{"image": "a.jpg", "captions": {"en": "a", "jp": "あ"}}, {"image": "b.jpg", "captions": {"en": "b"}},
             {"image": "c.jpg", "captions": {"en": "c"}}]
    (tmp_path / "m" / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines), encoding="utf-8")
    assert main(["shards", "--from-manifest", str(tmp_path / "m" / "c.jsonl"), "--dest", str(tmp_path / "s1")]) == 0
    data = load_shards(tmp_path / "s1", image_size=8)
    assert data.captions == [{"en": "a", "ja": "あ"}]

    images = torch.randint(0, 255, (5, 3, 8, 8), dtype=torch.uint8)
    caps = [{"en": f"e{i}", "ja": f"j{i}", "de": f"d{i}"} for i in range(5)]
    write_xtd(ImageCaptionSet(images, caps, [f"i{i}.png" for i in range(5)]), tmp_path / "x")
    (tmp_path / "x" / "images" / "i4.png").unlink()  # missing: skipped and counted
    assert main(["shards", "--from-xtd", str(tmp_path / "x"), "--dest", str(tmp_path / "s2"),
                 "--per-shard", "2"]) == 0
    data = load_shards(tmp_path / "s2", image_size=8)
    assert len(list((tmp_path / "s2").glob("*.tar"))) == 2 and len(data) == 4
    assert data.captions[3] == {"en": "e3", "de": "d3", "ja": "j3"}
    assert torch.equal(data.images[0], images[0])  # png round trip at the same size

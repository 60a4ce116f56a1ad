"""Tests for maskstudy.datasets.download against a local HTTP server (never the internet)."""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from maskstudy.datasets import download
from maskstudy.datasets.download import LFW_FILES, DownloadError, RemoteFile, fetch_lfw
from tests.conftest import QuietFiles, local_file_server

IDENTITIES = {"Alice_Example": 3, "Bob_Sample": 2}
PAIRS_TEXT = {
    "pairs.txt": "1\t1\nAlice_Example\t1\t2\nAlice_Example\t1\tBob_Sample\t1\n",
    "pairsDevTrain.txt": "1\nAlice_Example\t1\t3\nAlice_Example\t2\tBob_Sample\t2\n",
    "pairsDevTest.txt": "1\nAlice_Example\t2\t3\nAlice_Example\t3\tBob_Sample\t1\n",
}
FAKE_HOST = "https://mirror.invalid/files"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _make_archive(path: Path, top: str) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for name, count in IDENTITIES.items():
            for index in range(1, count + 1):
                buffer = io.BytesIO()
                Image.new("RGB", (8, 8), (40 * index, 80, 120)).save(buffer, format="JPEG")
                info = tarfile.TarInfo(f"{top}/{name}/{name}_{index:04d}.jpg")
                info.size = buffer.tell()
                buffer.seek(0)
                archive.addfile(info, buffer)


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, dict[str, RemoteFile]]:
    """A folder with fake LFW files and a registry (real-looking URLs, the fakes' checksums)."""
    folder = tmp_path / "served"
    folder.mkdir()
    _make_archive(folder / "lfw-funneled.tgz", "lfw_funneled")
    _make_archive(folder / "lfw.tgz", "lfw")
    for name, text in PAIRS_TEXT.items():
        (folder / name).write_text(text)
    registry = {
        path.name: RemoteFile(path.name, f"{FAKE_HOST}/{path.name}", _sha256(path))
        for path in folder.iterdir()
    }
    return folder, registry


class _TruncatingFiles(QuietFiles):
    """Announces the full length of .tgz files but sends only half, then closes the connection."""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.suffix != ".tgz":
            return super().do_GET()
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True


def _no_leftovers(dest: Path, registry: dict[str, RemoteFile]) -> None:
    """No extracted folder, no staging/temp files, and every file left behind has a valid hash."""
    names = sorted(p.name for p in dest.iterdir()) if dest.exists() else []
    assert "lfw_funneled" not in names
    assert not [n for n in names if n.startswith(".") or n.startswith("tmp")], names
    for name in names:
        assert _sha256(dest / name) == registry[name].sha256, name


@pytest.mark.parametrize("variant, folder", [("funneled", "lfw_funneled"), ("original", "lfw")])
def test_happy_path_then_offline(served, tmp_path, monkeypatch, variant, folder):
    served_folder, registry = served
    dest = tmp_path / "data"
    with local_file_server(served_folder) as base_url:
        root = fetch_lfw(dest, variant=variant, base_url=base_url, progress=False, files=registry)

    assert root == dest / folder
    for name, count in IDENTITIES.items():
        jpgs = sorted(p.name for p in (root / name).iterdir())
        assert jpgs == [f"{name}_{i:04d}.jpg" for i in range(1, count + 1)]
    for name, text in PAIRS_TEXT.items():
        assert (root / name).read_text() == text
    assert download.is_complete(root)
    assert (root / download.COMPLETE_MARKER).is_file()
    assert not list(dest.glob("*.tgz"))  # archive removed after extraction
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no staging folders left

    # Server is gone and pooch is disabled: the complete copy is returned without network access.
    def no_network(*args, **kwargs):
        raise AssertionError("network used")

    monkeypatch.setattr(download.pooch, "retrieve", no_network)
    assert fetch_lfw(dest, variant=variant, base_url=base_url, progress=False, files=registry) == root


def test_checksum_mismatch(served, tmp_path):
    served_folder, registry = served
    good = registry["lfw-funneled.tgz"]
    wrong = "0" * 64
    registry["lfw-funneled.tgz"] = RemoteFile(good.filename, good.url, wrong)
    dest = tmp_path / "data"
    with local_file_server(served_folder) as base_url:
        with pytest.raises(DownloadError) as info:
            fetch_lfw(dest, base_url=base_url, progress=False, files=registry)
    assert not (dest / "lfw-funneled.tgz").exists()
    message = str(info.value)
    assert "lfw-funneled.tgz" in message
    assert wrong in message and good.sha256 in message  # expected and got
    assert "MASKSTUDY_LFW" in message and "lfw_root" in message and "pairs.txt" in message
    _no_leftovers(dest, registry)


def test_interrupted_download_then_retry(served, tmp_path):
    served_folder, registry = served
    dest = tmp_path / "data"
    with local_file_server(served_folder, _TruncatingFiles) as base_url:
        with pytest.raises(DownloadError, match="lfw-funneled.tgz") as info:
            fetch_lfw(dest, base_url=base_url, progress=False, files=registry)
    assert "MASKSTUDY_LFW" in str(info.value)
    assert not (dest / "lfw-funneled.tgz").exists()
    _no_leftovers(dest, registry)

    with local_file_server(served_folder) as base_url:
        root = fetch_lfw(dest, base_url=base_url, progress=False, files=registry)
    assert download.is_complete(root)
    assert (root / "Alice_Example" / "Alice_Example_0001.jpg").is_file()


def test_http_404(served, tmp_path):
    served_folder, registry = served
    pairs = served_folder / "pairs.txt"
    pairs_text = pairs.read_text()
    pairs.unlink()
    dest = tmp_path / "data"
    with local_file_server(served_folder) as base_url:
        with pytest.raises(DownloadError, match=r"pairs\.txt.*HTTP 404") as info:
            fetch_lfw(dest, base_url=base_url, progress=False, files=registry)
        assert "MASKSTUDY_LFW" in str(info.value)
        _no_leftovers(dest, registry)  # files verified before the failure may stay: they are valid

        pairs.write_text(pairs_text)
        root = fetch_lfw(dest, base_url=base_url, progress=False, files=registry)
    assert (root / "pairs.txt").read_text() == pairs_text


def test_network_failure(served, tmp_path):
    served_folder, registry = served
    with local_file_server(served_folder) as base_url:
        pass  # the port is closed again: connection refused
    with pytest.raises(DownloadError, match="network failure"):
        fetch_lfw(tmp_path / "data", base_url=base_url, progress=False, files=registry)


def test_unmarked_folder_is_replaced(served, tmp_path):
    served_folder, registry = served
    dest = tmp_path / "data"
    half = dest / "lfw_funneled" / "Alice_Example"
    half.mkdir(parents=True)
    (half / "Alice_Example_0001.jpg").write_bytes(b"truncated")
    with local_file_server(served_folder) as base_url:
        root = fetch_lfw(dest, base_url=base_url, progress=False, files=registry)
    assert download.is_complete(root)
    assert len(list((root / "Alice_Example").iterdir())) == IDENTITIES["Alice_Example"]


def test_unknown_variant(tmp_path):
    with pytest.raises(ValueError, match="funneled") as info:
        fetch_lfw(tmp_path, variant="deepfunneled")
    assert "original" in str(info.value) and "deepfunneled" in str(info.value)


def test_registry_and_base_url():
    assert set(LFW_FILES) == {"lfw.tgz", "lfw-funneled.tgz", *download.PAIRS_FILES}
    for name, remote in LFW_FILES.items():
        assert remote.filename == name
        assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256)
    funneled = LFW_FILES["lfw-funneled.tgz"]
    assert funneled.resolve_url(None) == funneled.url
    assert funneled.resolve_url("http://127.0.0.1:8000/mirror/") == "http://127.0.0.1:8000/mirror/5976015"

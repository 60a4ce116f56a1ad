"""Hostile inputs (issue #8): every bad file becomes a recorded status and reason or a one-line error; no source
file changes, nothing is written outside the output folders, and no person is mixed up with another.

Every bad input is built on the fly in ``tmp_path``; real faces are copies of a few LFW photos.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from maskstudy.core import storage
from maskstudy.core.profiles import resolve_config
from maskstudy.datasets.build import (
    TEXT_COLUMNS,
    BuildSettings,
    build_aligned_dataset,
    read_manifest,
    several_faces_note,
)
from maskstudy.datasets.cleaning import clean_manifest
from maskstudy.datasets.protocol import make_split, read_lfw_pairs, read_lfw_people, scan_identity_folders
from maskstudy.evaluate import CHECKPOINT_FORMAT, FaceRecognizer, add_verify_arguments
from maskstudy.faces.detect import Detection, FaceDetector, load_image
from maskstudy.models import build_backbone
from maskstudy.report.pipeline import RunFolderLockedError, parse_parameter, run_folder_lock, run_pipeline

FACES = ["Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Abdullah_Gul/Abdullah_Gul_0001.jpg",
         "Adrien_Brody/Adrien_Brody_0001.jpg", "Aaron_Eckhart/Aaron_Eckhart_0001.jpg"]


def _quiet(*_args) -> None:
    pass


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header announcing ``width`` x ``height`` pixels with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))


def snapshot(folder: Path, skip: Path | None = None) -> dict[str, str]:
    """Relative path -> SHA-1 (or the symlink's target) of everything under ``folder`` except ``skip``."""
    out = {}
    for current, dirs, files in os.walk(os.fsencode(folder)):
        if skip is not None and Path(os.fsdecode(current)).resolve().is_relative_to(skip.resolve()):
            dirs[:] = []
            continue
        for name in dirs + files:
            path = os.path.join(current, name)
            key = os.fsdecode(os.path.relpath(path, os.fsencode(folder)))
            if os.path.islink(path):
                out[key] = "link:" + os.fsdecode(os.readlink(path))
            elif os.path.isfile(path):
                out[key] = hashlib.sha1(Path(os.fsdecode(path)).read_bytes()).hexdigest()
            else:
                out[key] = "dir"
    return out


def build(root: Path, out: Path, detector, images: pd.DataFrame | None = None, **kwargs) -> pd.DataFrame:
    images = scan_identity_folders(root, include_skipped=True) if images is None else images
    return build_aligned_dataset("toy", root, images, out, BuildSettings(), detector=detector, progress=False,
                                 log=_quiet, **kwargs)


def copy_face(lfw_root: Path, index: int, target: Path, fmt: str | None = None, scale: float = 1.0) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt is None and scale == 1.0:
        shutil.copy(lfw_root / FACES[index], target)
    else:
        image = Image.open(lfw_root / FACES[index]).convert("RGB")
        if scale != 1.0:
            image = image.resize((round(image.width * scale), round(image.height * scale)))
        image.save(target, format=fmt)
    return target


# ------------------------------------------------------------------------------------------
# The whole build on one folder of every bad kind
# ------------------------------------------------------------------------------------------


@pytest.fixture()
def hostile_tree(tmp_path, lfw_root):
    """``photos/P/`` holding good photos (JPEG, PNG, GIF, WebP, a huge one) and every bad kind of issue #8,
    next to a victim file that a path traversal would overwrite."""
    root = tmp_path / "photos"
    person = root / "P"
    good = {
        "P/good.jpg": copy_face(lfw_root, 0, person / "good.jpg"),
        "P/good_png.png": copy_face(lfw_root, 1, person / "good_png.png", "PNG"),
        "P/good_gif.gif": copy_face(lfw_root, 2, person / "good_gif.gif", "GIF"),
        "P/good_webp.webp": copy_face(lfw_root, 3, person / "good_webp.webp", "WEBP"),
        "P/huge.jpg": copy_face(lfw_root, 0, person / "huge.jpg", "JPEG", scale=10.0),  # 2500 x 2500
        "P/dup.jpeg": copy_face(lfw_root, 1, person / "dup.jpeg"),  # first of its collision group: kept
    }
    copy_face(lfw_root, 2, person / "dup.jpg")  # another person under the same crop name
    copy_face(lfw_root, 3, person / "dup.png", "PNG")
    (person / "bomb.png").write_bytes(png_claiming(20000, 20000))
    (person / "truncated.jpg").write_bytes((lfw_root / FACES[0]).read_bytes()[:3000])
    (person / "garbage.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (1, 1)).save(person / "tiny.png")
    with open(os.path.join(os.fsencode(person), b"caf\xe9.jpg"), "wb") as handle:  # not UTF-8
        handle.write((lfw_root / FACES[0]).read_bytes())
    os.symlink("loop.jpg", person / "loop.jpg")
    os.symlink(tmp_path / "nowhere.jpg", person / "dangling.jpg")
    (person / "folder.jpg").mkdir()
    (person / "sub").mkdir()
    copy_face(lfw_root, 0, person / "sub" / "deep.jpg")
    copy_face(lfw_root, 0, person / "good_mask.jpg")  # a twin supplied by the user
    (person / "notes.txt").write_text("not a photo")
    (person / "no_extension").write_bytes((lfw_root / FACES[0]).read_bytes())
    (person / ".hidden.jpg").write_bytes((lfw_root / FACES[0]).read_bytes())
    copy_face(lfw_root, 0, root / "at_root.jpg")
    two = Image.new("RGB", (500, 250))
    two.paste(Image.open(lfw_root / FACES[0]), (0, 0))
    two.paste(Image.open(lfw_root / FACES[1]), (250, 0))
    two.save(person / "two_faces.jpg")
    copy_face(lfw_root, 3, tmp_path / "victim.jpg")
    return root, good


EXPECTED = {  # image -> (status, words in the reason)
    "P/bomb.png": ("too_large", "DecompressionBomb"),
    "P/truncated.jpg": ("truncated", "truncated"),
    "P/garbage.jpg": ("unreadable", ""),
    "P/tiny.png": ("too_small", "1x1"),
    "P/caf\\xe9.jpg": ("bad_name", "not valid UTF-8"),
    "P/loop.jpg": ("unreadable", "symlink loop"),
    "P/dangling.jpg": ("unreadable", "dangling symlink"),
    "P/folder.jpg": ("unreadable", "folder named like an image"),
    "P/sub": ("skipped", "sub-folder"),
    "P/good_mask.jpg": ("skipped", "masked twin"),
    "P/notes.txt": ("skipped", "extension"),
    "P/no_extension": ("skipped", "extension"),
    "P/.hidden.jpg": ("skipped", "hidden"),
    "at_root.jpg": ("skipped", "not inside an identity folder"),
    "P/dup.jpg": ("name_collision", "P/dup.jpeg"),
    "P/dup.png": ("name_collision", "P/dup.jpeg"),
    "../victim.jpg": ("bad_name", ".."),
    "/etc/passwd": ("bad_name", "absolute"),
}


@pytest.mark.realdata
def test_build_on_every_bad_kind_records_each_file_and_changes_nothing(hostile_tree, tmp_path, detector):
    root, good = hostile_tree
    out = tmp_path / "out"
    out.mkdir()
    before = snapshot(tmp_path, skip=out)
    listed = scan_identity_folders(root, include_skipped=True)
    traversal = pd.DataFrame({"identity": ["P", "P"], "image": ["../victim.jpg", "/etc/passwd"]})
    manifest = build(root, out, detector, pd.concat([listed, traversal], ignore_index=True))

    after = snapshot(tmp_path, skip=out)
    assert after == before  # no source changed, nothing appeared outside the output folder
    on_disk = read_manifest(out / "toy" / "manifest.csv").set_index("image")
    assert len(on_disk) == len(manifest) == len(listed) + 2
    assert (on_disk["status"] != "").all()
    assert not manifest[TEXT_COLUMNS].isna().any().any()  # the frame notebook 01 goes on with: "" as on disk
    assert (on_disk.loc[on_disk["status"] != "ok", "reason"] != "").all()  # every skip says why
    for image, (status, words) in EXPECTED.items():
        assert on_disk.loc[image, "status"] == status, (image, on_disk.loc[image, "reason"])
        assert words in on_disk.loc[image, "reason"], (image, on_disk.loc[image, "reason"])
    for image in good:
        row = on_disk.loc[image]
        assert row["status"] == "ok", (image, row["reason"])
        assert (out / "toy" / "aligned" / row["aligned"]).is_file()
        assert (out / "toy" / "aligned" / row["masked"]).is_file()
    # the huge photo's landmarks are in its own coordinates (mapped back from the downscaled detection)
    assert on_disk.loc["P/huge.jpg", "lm0_x"] > 500 and on_disk.loc["P/huge.jpg", "width"] == 2500
    # the kept crop of the collision group is the first file's face, not the last one written
    kept = np.asarray(Image.open(out / "toy" / "aligned" / "P/dup.jpg"), float)
    fresh = build(root, out / "again", detector, pd.DataFrame({"identity": ["P"], "image": ["P/dup.jpeg"]}),
                  record_skipped_files=False)
    assert fresh["status"].tolist() == ["ok"]
    # the same photo's face; MTCNN's landmarks move by a hair with the batch it runs in (JPEG values +-2)
    np.testing.assert_allclose(kept, np.asarray(Image.open(out / "again/toy/aligned/P/dup.jpg"), float), atol=3)
    # two faces of equal size: the row is marked and the cleaning step drops it
    assert on_disk.loc["P/two_faces.jpg", "reason"].startswith("ambiguous_face: 2 faces")
    cleaned = clean_manifest(on_disk.reset_index(), max_deviation=1.0).set_index("image")
    assert cleaned.loc["P/two_faces.jpg", "drop_reason"] == "ambiguous_face"
    assert cleaned.loc["P/good.jpg", "keep"]

    # as notebook 01 calls it (the scan without the skipped files): the build lists them all the same
    plain = build(root, out / "plain", NoFaceDetector(), scan_identity_folders(root))
    assert set(plain["image"]) == set(listed["image"]) - {"at_root.jpg"}  # a file outside any identity folder
    plain = plain.set_index("image")
    for image, (status, _) in EXPECTED.items():
        assert image not in plain.index or plain.loc[image, "status"] == status, image

    # a rerun reuses every row and still changes nothing
    again = build(root, out, detector, pd.concat([listed, traversal], ignore_index=True))
    assert again["status"].tolist() == manifest["status"].tolist()
    assert snapshot(tmp_path, skip=out) == before


# ------------------------------------------------------------------------------------------
# 1. Path traversal
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ["../evil 1 2", "/abs 1 2", "a/b 1 2", ".. 1 2"])
def test_pairs_with_unsafe_names_are_refused_with_the_line(tmp_path, line):
    (tmp_path / "pairs.txt").write_text(f"1\t1\n{line}\nA 1 B 1\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:2: unsafe identity name"):
        read_lfw_pairs(tmp_path / "pairs.txt")
    (tmp_path / "people.txt").write_text(f"1\n{line.split()[0]} 2\n")
    with pytest.raises(ValueError, match=r"people\.txt:2: unsafe identity name"):
        read_lfw_people(tmp_path / "people.txt")


def test_a_protocol_file_that_is_not_utf8_is_one_clear_error(tmp_path):
    (tmp_path / "pairs.txt").write_bytes(b"1\t1\nJos\xe9 1 2\nA 1 B 1\n")
    with pytest.raises(ValueError, match=r"pairs\.txt:2: not UTF-8 text: 'Jos\\\\xe9 1 2'"):
        read_lfw_pairs(tmp_path / "pairs.txt")


def test_writers_refuse_outputs_outside_their_root(tmp_path):
    assert storage.path_inside(tmp_path, "a/b.jpg") == (tmp_path / "a" / "b.jpg").resolve()
    for name in ("../x.jpg", "/tmp/x.jpg", "a/../../x.jpg"):
        with pytest.raises(storage.UnsafePathError, match="outside"):
            storage.path_inside(tmp_path / "out", name)
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path, tmp_path / "out" / "link")  # a planted link that leads out
    with pytest.raises(storage.UnsafePathError):
        storage.path_inside(tmp_path / "out", "link/x.jpg")


def test_build_records_traversal_names_without_reading_or_writing(tmp_path):
    victim = tmp_path / "victim.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(victim)
    digest = hashlib.sha1(victim.read_bytes()).hexdigest()
    images = pd.DataFrame({"identity": ["x", "x", "x"], "image": ["../victim.jpg", str(victim), "x/./y.jpg"]})
    manifest = build(tmp_path / "photos", tmp_path / "out", detector=object(), images=images)
    assert manifest["status"].tolist() == ["bad_name"] * 3
    assert hashlib.sha1(victim.read_bytes()).hexdigest() == digest


# ------------------------------------------------------------------------------------------
# 2. Huge photos and decompression bombs
# ------------------------------------------------------------------------------------------


class RecordingCascade:
    """Stands in for the MTCNN cascade: records the photo shapes and finds one face in the middle of each."""

    def __init__(self):
        self.shapes = []

    def __call__(self, images):
        results = []
        for image in images:
            self.shapes.append(image.shape)
            height, width = image.shape[:2]
            box = np.array([[width * 0.3, height * 0.3, width * 0.7, height * 0.7, 0.99]])
            marks = np.array([[[0.4, 0.4], [0.6, 0.4], [0.5, 0.5], [0.42, 0.6], [0.58, 0.6]]]) * [width, height]
            results.append((box, marks))
        return results


def test_a_huge_photo_is_downscaled_for_detection_and_mapped_back():
    detector = FaceDetector.__new__(FaceDetector)
    detector.min_prob, detector.max_side, detector.cascade = 0.9, 1600, RecordingCascade()
    small = [Image.new("RGB", (250, 250))] * 3
    huge = Image.new("RGB", (8000, 6000))
    detections = detector.detect([*small, huge])
    pixels = sum(int(np.prod(shape)) for shape in detector.cascade.shapes)
    assert pixels < 1600 * 1200 * 3 + 4 * 250 * 250 * 3  # before: 4 x 8000 x 6000 x 3 (576 MB as uint8)
    assert max(shape[:2] for shape in detector.cascade.shapes) == (1200, 1600)
    np.testing.assert_allclose(detections[3].boxes[0], [2400, 1800, 5600, 4200], atol=5)
    np.testing.assert_allclose(detections[0].boxes[0], [75, 75, 175, 175])


def test_a_decompression_bomb_is_recorded_not_fatal(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(20000, 20000))  # 400 Mpx: over PIL's hard limit
    (tmp_path / "big.png").write_bytes(png_claiming(10000, 10000))  # 100 Mpx: PIL only warns, then loads
    for name in ("bomb.png", "big.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = load_image(tmp_path / name)
        assert loaded.image is None and loaded.status == "too_large", loaded


# ------------------------------------------------------------------------------------------
# 3. / 4. Non-UTF-8 names, symlink loops, dangling symlinks, folders named like images
# ------------------------------------------------------------------------------------------


def test_non_utf8_names_are_recorded_escaped_and_the_manifest_is_written(tmp_path):
    root = tmp_path / "photos"
    (root / "P").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "P" / "plain.jpg")
    os.mkdir(os.path.join(os.fsencode(root), b"Jos\xe9"))
    for folder, name in ((b"P", b"caf\xe9.jpg"), (b"Jos\xe9", b"a.jpg")):
        with open(os.path.join(os.fsencode(root), folder, name), "wb") as handle:
            handle.write(b"x")
    listed = scan_identity_folders(root, include_skipped=True)
    assert scan_identity_folders(root)["image"].tolist() == ["P/plain.jpg"]
    images = pd.concat([listed, pd.DataFrame({"identity": ["P"], "image": [os.fsdecode(b"P/n\xffo.jpg")]})])
    build(root, tmp_path / "out", detector=NoFaceDetector(), images=images)
    manifest = read_manifest(tmp_path / "out" / "toy" / "manifest.csv").set_index("image")
    assert manifest.loc["P/caf\\xe9.jpg", "status"] == "bad_name"
    assert "caf\\\\xe9" in manifest.loc["P/caf\\xe9.jpg", "reason"]
    assert manifest.loc["Jos\\xe9/a.jpg", "status"] == "bad_name"
    assert manifest.loc["P/n\\xffo.jpg", "status"] == "bad_name"
    assert manifest.loc["P/plain.jpg", "status"] == "no_face"


class NoFaceDetector:
    def detect(self, images):
        return [Detection(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)), None) for _ in images]


def test_links_and_folders_named_like_images_are_recorded_in_scan_and_digest(tmp_path):
    root = tmp_path / "photos"
    (root / "P").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(root / "P" / "ok.jpg")
    os.symlink("loop.jpg", root / "P" / "loop.jpg")
    os.symlink(tmp_path / "gone.jpg", root / "P" / "dangling.jpg")
    (root / "P" / "dir.jpg").mkdir()
    os.symlink("Q", root / "Q")  # an identity folder that is a symlink loop
    listed = scan_identity_folders(root, include_skipped=True).set_index("image")
    assert listed.loc["P/loop.jpg", "reason"].startswith("symlink loop")
    assert listed.loc["P/dangling.jpg", "reason"].startswith("dangling symlink")
    assert listed.loc["P/dir.jpg", "status"] == "unreadable"
    assert listed.loc["Q", "reason"].startswith("symlink loop")
    # a list that names them directly (as pairs.txt does) reaches the digest step: recorded there too
    images = pd.DataFrame({"identity": ["P"] * 5, "image": ["P/ok.jpg", "P/loop.jpg", "P/dangling.jpg",
                                                            "P/dir.jpg", "P/missing.jpg"]})
    manifest = build(root, tmp_path / "out", detector=NoFaceDetector(), images=images).set_index("image")
    assert manifest["reason"].to_dict() == {
        "P/ok.jpg": "MTCNN found no face", "P/loop.jpg": "symlink loop", "P/dangling.jpg": "dangling symlink",
        "P/dir.jpg": "a folder, not a file", "P/missing.jpg": "file not found"}


# ------------------------------------------------------------------------------------------
# 5. Output-name collisions
# ------------------------------------------------------------------------------------------


def test_colliding_output_names_are_refused_except_the_first(tmp_path):
    images = pd.DataFrame({"identity": ["p", "p", "p", "q"],
                           "image": ["p/x.png", "p/x.jpg", "p/x.jpeg", "q/x.png"]})
    root = tmp_path / "photos"
    for rel in images["image"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(root / rel)
    manifest = build(root, tmp_path / "out", detector=NoFaceDetector(), images=images).set_index("image")
    assert manifest.loc["p/x.jpeg", "status"] == "no_face"  # first in sorted order keeps p/x.jpg
    assert manifest.loc["q/x.png", "status"] == "no_face"  # another folder: no collision
    for name in ("p/x.jpg", "p/x.png"):
        assert manifest.loc[name, "status"] == "name_collision"
        assert "p/x.jpg is already p/x.jpeg's" in manifest.loc[name, "reason"]


# ------------------------------------------------------------------------------------------
# 6. Concurrent runs on one report folder
# ------------------------------------------------------------------------------------------


def test_a_second_run_on_a_locked_report_folder_names_the_holder(tmp_path):
    with run_folder_lock(tmp_path / "run"):
        with pytest.raises(RunFolderLockedError, match=rf"in use by another run \(pid {os.getpid()} on "):
            run_pipeline("smoke", only="06", run_dir=tmp_path / "run", log=_quiet)
    assert not (tmp_path / "run" / "run.json").exists()
    with run_folder_lock(tmp_path / "run"):  # released: taken again
        pass


# ------------------------------------------------------------------------------------------
# 7. Command-line errors: one line, exit status 2
# ------------------------------------------------------------------------------------------


def _checkpoint(path: Path, **config_changes) -> Path:
    torch.manual_seed(0)
    model = build_backbone("ir18", width=0.125, input_size=56, embedding_size=32)
    config = {"backbone": "ir18", "width": 0.125, "input_size": 56, "embedding_size": 32, **config_changes}
    torch.save({"format": CHECKPOINT_FORMAT, "config": config, "model": model.state_dict()}, path)
    return path


@pytest.fixture()
def verify_case(tmp_path):
    root = tmp_path / "aligned"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(root / f"{name}.jpg")
    (tmp_path / "pairs.txt").write_text("a.jpg b.jpg 1\nb.jpg a.jpg 0\n")
    return tmp_path, root


def _verify(capsys, case, *extra: str) -> tuple[int, str]:
    tmp_path, root = case
    parser = argparse.ArgumentParser()
    add_verify_arguments(parser)
    options = {"--checkpoint": str(tmp_path / "ckpt.pt"), "--pairs": str(tmp_path / "pairs.txt"),
               "--root": str(root), "--device": "cpu"}
    for key, value in zip(extra[::2], extra[1::2]):
        options[key] = value
    if not (tmp_path / "ckpt.pt").exists():
        _checkpoint(tmp_path / "ckpt.pt")
    args = parser.parse_args([part for item in options.items() for part in item] + ["--no-progress"])
    status = args.handler(args)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("problem", ["truncated crop", "bad device", "output is a folder", "backbone_kwargs",
                                     "batch size 0"])
def test_verify_errors_are_one_line_with_status_2(verify_case, capsys, problem):
    tmp_path, root = verify_case
    extra: list[str] = []
    if problem == "truncated crop":
        data = (root / "a.jpg").read_bytes()
        (root / "a.jpg").write_bytes(data[:len(data) // 2])
    elif problem == "bad device":
        extra = ["--device", "gpu7"]
    elif problem == "output is a folder":
        extra = ["--output", str(tmp_path)]
    elif problem == "backbone_kwargs":
        extra = ["--checkpoint", str(_checkpoint(tmp_path / "odd.pt", backbone_kwargs={"no_such_option": 3}))]
    else:
        extra = ["--batch-size", "0"]
    status, err = _verify(capsys, verify_case, *extra)
    assert status == 2
    assert err.startswith("maskstudy verify: ") and err.count("\n") == 1 and "Traceback" not in err
    words = {"truncated crop": "a.jpg", "bad device": "gpu7", "output is a folder": "is a folder",
             "backbone_kwargs": "no_such_option", "batch size 0": "--batch-size"}[problem]
    assert words in err


@pytest.mark.parametrize("problem", ["outside root", "foreign model file", "damaged model file", "missing model"])
def test_verify_refuses_bad_pairs_and_model_files_in_one_line(verify_case, capsys, problem):
    """A pair file naming a photo outside --root, and model files that are not the study's: one line, status 2."""
    tmp_path, root = verify_case
    extra: list[str] = []
    if problem == "outside root":
        (tmp_path / "secret.jpg").write_bytes((root / "a.jpg").read_bytes())
        (tmp_path / "pairs.txt").write_text("a.jpg ../secret.jpg 1\n")
    elif problem == "foreign model file":
        torch.save({"format": "someone-elses-v3", "weights": torch.zeros(2)}, tmp_path / "foreign.pt")
        extra = ["--checkpoint", str(tmp_path / "foreign.pt")]
    elif problem == "damaged model file":
        data = _checkpoint(tmp_path / "cut.pt").read_bytes()
        (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
        extra = ["--checkpoint", str(tmp_path / "cut.pt")]
    else:
        extra = ["--checkpoint", str(tmp_path / "nowhere.pt")]
    status, err = _verify(capsys, verify_case, *extra)
    assert status == 2 and err.startswith("maskstudy verify: ") and err.count("\n") == 1
    words = {"outside root": "outside --root", "foreign model file": "not a model file of this study",
             "damaged model file": "cut.pt", "missing model": "nowhere.pt"}[problem]
    assert words in err


def _compare(capsys, *argv: str) -> tuple[int, str, str]:
    from maskstudy.__main__ import main

    status = main(["compare", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("problem", ["missing photo", "no face", "damaged model file", "foreign model file",
                                     "no default model"])
def test_compare_refuses_bad_input_with_one_line_and_its_status(tmp_path, capsys, monkeypatch, problem):
    """``compare``: a missing photo, a damaged or foreign model file, no model file at all: status 2; a photo
    without a face: status 3; each one line, no traceback."""
    rng = np.random.default_rng(0)
    blank = tmp_path / "wall.png"
    Image.fromarray(np.full((160, 160, 3), 128, np.uint8)).save(blank)  # no face anywhere
    other = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(other)
    model = _checkpoint(tmp_path / "model.pt")
    argv = [str(blank), str(other), "--checkpoint", str(model), "--device", "cpu"]
    expected = {"missing photo": (2, "photo not found"), "no face": (3, "no face found in"),
                "damaged model file": (2, "model.pt"), "foreign model file": (2, "not a model file of this study"),
                "no default model": (2, "no --checkpoint given")}[problem]
    if problem == "missing photo":
        argv[0] = str(tmp_path / "absent.jpg")
    elif problem == "damaged model file":
        model.write_bytes(model.read_bytes()[:100])
    elif problem == "foreign model file":
        torch.save({"format": "someone-elses-v3"}, model)
    elif problem == "no default model":
        import maskstudy.__main__ as cli

        monkeypatch.setattr(cli, "default_checkpoint", lambda: tmp_path / "reports" / "ft_mask_aware.pt")
        argv = argv[:2]
    status, _, err = _compare(capsys, *argv)
    assert (status, err.count("\n")) == (expected[0], 1) and "Traceback" not in err
    assert err.startswith("maskstudy compare: ") and expected[1] in err


def test_run_with_a_yaml_error_in_a_parameter_is_one_line(capsys):
    from maskstudy.__main__ import main

    assert main(["run", "--profile", "smoke", "-p", "seed=[1,"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("maskstudy: parameter seed: '[1,' is not a valid YAML value") and err.count("\n") == 1
    with pytest.raises(ValueError, match="not a valid YAML value"):
        parse_parameter("vit_kwargs={depth: [")


# ------------------------------------------------------------------------------------------
# 8. -p values are type-checked when the run starts
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{"seed": "abc"}, {"seed": 1.5}, {"train_epochs": "abc"},
                                       {"nomask_baseline": 1}, {"attention_variants": "se"}])
def test_parameter_types_are_checked(overrides):
    key = next(iter(overrides))
    with pytest.raises(ValueError, match=rf"{key}=.* has type"):
        resolve_config("cpu", overrides)


def test_parameter_values_of_the_right_type_pass():
    config = resolve_config("cpu", {"seed": 3, "train_scale": 64, "train_val_identities": 3, "lfw_root": "/x",
                                    "max_train_identities": 5, "extra_datasets": {}, "eval_folds": [1]})
    assert config["seed"] == 3 and config["train_scale"] == 64
    assert resolve_config("smoke", resolve_config("smoke"))["profile"] == "smoke"  # what notebooks pass back


# ------------------------------------------------------------------------------------------
# 9. Ignored files are listed with a reason; GIF and WebP are read
# ------------------------------------------------------------------------------------------


def test_scan_lists_ignored_files_with_a_reason_and_reads_gif_and_webp(tmp_path):
    root = tmp_path / "photos"
    (root / "P").mkdir(parents=True)
    for name, fmt in (("a.gif", "GIF"), ("b.webp", "WEBP"), ("c.jpg", "JPEG"), ("c_mask.jpg", "JPEG")):
        Image.new("RGB", (64, 64), (10, 200, 10)).save(root / "P" / name, format=fmt)
    (root / "P" / "readme").write_text("x")
    listed = scan_identity_folders(root, include_skipped=True).set_index("image")
    assert listed["status"].to_dict() == {"P/a.gif": "", "P/b.webp": "", "P/c.jpg": "", "P/c_mask.jpg": "skipped",
                                          "P/readme": "skipped"}
    assert "masked twin" in listed.loc["P/c_mask.jpg", "reason"]
    assert scan_identity_folders(root)["image"].tolist() == ["P/a.gif", "P/b.webp", "P/c.jpg"]
    for name in ("a.gif", "b.webp"):
        loaded = load_image(root / "P" / name)
        assert loaded.status == "ok" and loaded.image.mode == "RGB" and loaded.image.size == (64, 64)
    # a twin given directly (not through the scan) is not detected either; the folder's other non-photo is
    # listed beside it
    manifest = build(root, tmp_path / "out", detector=NoFaceDetector(),
                     images=pd.DataFrame({"identity": ["P"], "image": ["P/c_mask.jpg"]}))
    assert manifest.set_index("image")["status"].to_dict() == {"P/c_mask.jpg": "skipped", "P/readme": "skipped"}


# ------------------------------------------------------------------------------------------
# 10. Reserved dataset names
# ------------------------------------------------------------------------------------------


def test_an_extra_training_set_named_lfw_is_refused():
    with pytest.raises(ValueError, match="'lfw' is reserved"):
        resolve_config("cpu", {"extra_datasets": {"lfw": "/somewhere"}})
    with pytest.raises(ValueError, match="letters, digits"):
        resolve_config("cpu", {"extra_datasets": {"../up": "/somewhere"}})
    pairs = pd.DataFrame([(1, 0, "A", "A/A_0001.jpg", "A", "A/A_0002.jpg", 1)],
                         columns=["fold", "pair_index", "identity_a", "image_a", "identity_b", "image_b", "label"])
    extra = {"lfw": pd.DataFrame({"identity": ["x"], "image": ["x/1.jpg"]})}
    with pytest.raises(ValueError, match="may not be named 'lfw'"):
        make_split(pd.DataFrame(columns=["identity", "image"]), pairs, {"A": 1}, extra)


# ------------------------------------------------------------------------------------------
# 11. Several faces
# ------------------------------------------------------------------------------------------


def test_several_faces_record_the_choice_and_mark_unclear_ones():
    boxes = np.array([[100, 100, 200, 200], [0, 0, 90, 90], [300, 0, 320, 20]], float)
    clear = Detection(boxes, np.array([0.99, 0.5, 0.95]), np.zeros((3, 5, 2)), 0)
    assert several_faces_note(clear, 0, 0.9) == "3 faces: chose face 0 (nearest the centre), area 25.00x the next"
    unclear = Detection(boxes, np.array([0.99, 0.99, 0.95]), np.zeros((3, 5, 2)), 0)
    assert several_faces_note(unclear, 0, 0.9).startswith("ambiguous_face: 3 faces: chose face 0")


# ------------------------------------------------------------------------------------------
# 12. FaceRecognizer fallbacks, tiny images, stale temp files
# ------------------------------------------------------------------------------------------


def test_similarity_warns_about_the_no_face_fallback_and_tiny_images_are_named(tmp_path):
    recognizer = FaceRecognizer.from_checkpoint(_checkpoint(tmp_path / "ckpt.pt"), device="cpu",
                                                detector=NoFaceDetector())
    grey = np.full((120, 120, 3), 128, dtype=np.uint8)
    with pytest.warns(UserWarning, match="no face found in photo") as caught:
        recognizer.similarity(grey, grey)
    assert [str(w.message)[:26] for w in caught] == ["no face found in photo a: ", "no face found in photo b: "]
    with pytest.raises(ValueError, match="too small: 1x1 px"):
        recognizer.embed(np.zeros((1, 1, 3), dtype=np.uint8))
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    with pytest.raises(ValueError, match="too_small: image is 1x1 px"):
        recognizer.embed(tmp_path / "dot.png")


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / "last.pt").write_bytes(b"whole")
    removed = storage.remove_stale_temp_files(tmp_path)
    assert [p.name for p in removed] == [".last.pt.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]

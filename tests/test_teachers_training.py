"""The teacher pass over the training photos (maskstudy.teachers.training), on a tiny synthetic data folder with a
stand-in teacher, and once with dlib on real LFW photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

from maskstudy.core import storage
from maskstudy.datasets.build import BOX_COLUMNS, LANDMARK_COLUMNS, MANIFEST_COLUMNS, file_seed
from maskstudy.datasets.pairs import masked_name
from maskstudy.faces.align import estimate_alignment, warp
from maskstudy.faces.detect import file_digest
from maskstudy.faces.masks.drawing import TRAINING_STYLES, UNSEEN_STYLES, choose_style, draw_mask
from maskstudy.teachers import Teacher
from maskstudy.teachers.training import (
    default_training_file,
    embed_training_photos,
    load_training_targets,
    training_keys,
)

SEED = 0
BOX = (30.0, 25.0, 95.0, 100.0)
LANDMARKS = np.array([[48.0, 52.0], [77.0, 52.0], [62.0, 68.0], [50.0, 84.0], [75.0, 84.0]])


class StandInTeacher(Teacher):
    """Embeds the mean colour inside the box, the box relative to the photo, and the photo's size: any change of
    photo or box changes the embedding. Counts the photos it embedded."""

    name = "stand_in"
    embedding_size = 10

    def __init__(self):
        super().__init__(batch_size=4)
        self.embedded = 0

    def embed_boxes(self, images, boxes):
        rows = []
        for image, box in zip(images, boxes):
            self.embedded += 1
            width, height = image.size
            mean = np.asarray(image.crop(tuple(int(round(v)) for v in box)), dtype=np.float64).reshape(-1, 3).mean(0)
            rows.append(np.r_[mean / 255.0, np.asarray(box) / [width, height, width, height], width / 100.0,
                              height / 100.0, 1.0])
        rows = np.array(rows)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _photo(size: tuple[int, int], colour, shade: int) -> Image.Image:
    width, height = size
    ramp = np.linspace(0, shade, width)[None, :, None]
    pixels = np.clip(np.asarray(colour, dtype=np.float64)[None, None, :] + ramp, 0, 255)
    image = Image.fromarray(np.broadcast_to(pixels, (height, width, 3)).astype(np.uint8))
    ImageDraw.Draw(image).ellipse((35, 25, 90, 105), fill=(200, 160, 140))
    return image


def make_study_data(root: Path, n_people: int = 4, per_person: int = 3) -> dict:
    """A data folder as notebooks 01-02 leave it, for ``lfw``: source photos, manifest (+ .json), aligned crops and
    every masked variant's crop, full masked photos, masked_variants.csv, sources.json and train_clean.csv.

    ``Person_3``'s photos are 130 px wide (the test detector finds no face on them); ``Person_0_0003`` is a
    fallback-aligned row (no face, the build's median landmarks).
    """
    from maskstudy.datasets.masked_photos import COLUMNS as VARIANT_COLUMNS
    from maskstudy.datasets.masked_photos import variant_name

    src, data = root / "src", root / "data"
    out = data / "lfw"
    rows, variants = [], []
    rng = np.random.default_rng(0)
    for k in range(n_people):
        name = f"Person_{k}"
        size = (130, 120) if k == 3 else (120, 120)
        for j in range(per_person):
            image_rel = f"{name}/{name}_{j + 1:04d}.jpg"
            photo = _photo(size, rng.integers(20, 120, size=3), shade=40 * j + 10)
            (src / name).mkdir(parents=True, exist_ok=True)
            photo.save(src / image_rel, quality=95)
            fallback = (k, j) == (0, 2)
            aligned = image_rel
            masked = masked_name(aligned)
            style = choose_style(image_rel, SEED, TRAINING_STYLES)
            unseen = "" if fallback else choose_style(image_rel, SEED, UNSEEN_STYLES)
            landmarks = LANDMARKS  # the median of the detected rows too: all share these landmarks
            name_seed = int(file_seed(image_rel, SEED))
            masked_photo = draw_mask(photo, landmarks, style, seed=name_seed)
            storage.save_image(out / "masked_photos" / masked, masked_photo, quality=92)
            matrix = estimate_alignment(landmarks, 112)
            storage.save_image(out / "aligned" / aligned, warp(photo, matrix, 112))
            storage.save_image(out / "aligned" / masked, warp(masked_photo, matrix, 112))
            for variant in ("detected", "detected_eyes", "unseen", "unseen_detected"):
                storage.save_image(out / "aligned" / variant_name(aligned, variant),
                                   warp(masked_photo, matrix, 112).rotate(5 * (1 + len(variant))))
            if unseen:
                storage.save_image(out / "masked_photos" / variant_name(aligned, "unseen"),
                                   draw_mask(photo, landmarks, unseen, seed=name_seed), quality=92)
            row = {"dataset": "lfw", "identity": name, "image": image_rel, "sha1": file_digest(src / image_rel),
                   "width": size[0], "height": size[1], "load_notes": "", "n_faces": 0 if fallback else 1,
                   "status": "no_face" if fallback else "ok", "reason": "", "aligned": aligned, "masked": masked,
                   "mask_style": style, "aligned_by": "fallback" if fallback else "landmarks"}
            if not fallback:
                row.update(face_index=0, prob=0.999, **dict(zip(BOX_COLUMNS, BOX)),
                           **dict(zip(LANDMARK_COLUMNS, landmarks.ravel())))
            rows.append(row)
            variants.append({"image": image_rel, "sha1": row["sha1"], "aligned": aligned, "seen_style": style,
                             "unseen_style": unseen, "seen_found": True, "seen_fallback": False,
                             "seen_landmark_error": 0.1, "unseen_found": True, "unseen_fallback": False,
                             "unseen_landmark_error": 0.1, "settings": "v1"})
    manifest = pd.DataFrame(rows).reindex(columns=MANIFEST_COLUMNS)
    storage.write_csv(out / "manifest.csv", manifest)
    storage.write_json(out / "manifest.json", {"crop_size": 112, "min_face_size": 20, "min_prob": 0.9, "seed": SEED,
                                               "version": 1})
    storage.write_csv(out / "masked_variants.csv", pd.DataFrame(variants, columns=VARIANT_COLUMNS))
    storage.write_json(data / "sources.json", {"lfw": str(src)})
    train = manifest[manifest["status"] == "ok"][["dataset", "identity", "image", "aligned", "masked", "mask_style"]]
    storage.write_csv(data / "split" / "train_clean.csv", train)
    return {"src": src, "data": data, "manifest": manifest, "train_csv": data / "split" / "train_clean.csv"}


@pytest.fixture
def study(tmp_path) -> dict:
    return make_study_data(tmp_path)


# ---------------------------------------------------------------------------------------------


def test_training_pass_embeds_each_photo_in_its_box_and_reuses_the_cache(study):
    teacher = StandInTeacher()
    lines = []
    done = embed_training_photos(teacher, study["train_csv"], study["data"], progress=False, log=lines.append)
    train = pd.read_csv(study["train_csv"], dtype=str, keep_default_na=False)
    assert done.path == default_training_file(study["data"], "stand_in") and done.path.is_file()
    assert (done.rows, done.photos, done.computed, done.fallback) == (len(train), len(train), len(train), 0)
    assert done.seconds > 0 and done.photos_per_s > 0 and "photos/s" in lines[0]
    assert json.loads(done.path.with_suffix(".json").read_text())["photos"] == len(train)
    assert not list(done.path.parent.glob(".*.tmp"))

    targets = load_training_targets(done.path, train, centre=False)
    boxes = np.tile(BOX, (len(train), 1))
    expected = StandInTeacher().embed_files([study["src"] / i for i in train["image"]], boxes).embeddings
    np.testing.assert_allclose(targets.embeddings, expected, rtol=1e-6)
    assert targets.teacher == "stand_in" and targets.settings["name"] == "stand_in"

    again = embed_training_photos(teacher, study["train_csv"], study["data"], progress=False, log=None)
    assert again.computed == 0 and teacher.embedded == len(train) and np.isnan(again.photos_per_s)
    np.testing.assert_array_equal(load_training_targets(again.path, train, centre=False).embeddings,
                                  targets.embeddings)


def test_training_pass_refuses_unknown_or_changed_photos(study, tmp_path):
    train = pd.read_csv(study["train_csv"], dtype=str, keep_default_na=False)
    bad = tmp_path / "bad.csv"
    pd.concat([train, train.iloc[:1].assign(image="Nobody/Nobody_0001.jpg")]).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="1 training photo.*not in its manifest.*Nobody_0001"):
        embed_training_photos(StandInTeacher(), bad, study["data"], progress=False, log=None)
    train.assign(dataset="celeba").to_csv(bad, index=False)
    with pytest.raises(ValueError, match="dataset 'celeba' has no photo folder"):
        embed_training_photos(StandInTeacher(), bad, study["data"], progress=False, log=None)
    Image.new("RGB", (120, 120), (0, 0, 0)).save(study["src"] / train["image"].iloc[0])
    with pytest.raises(ValueError, match="changed since the data build"):
        embed_training_photos(StandInTeacher(), study["train_csv"], study["data"], progress=False, log=None)
    with pytest.raises(FileNotFoundError, match="sources.json"):
        embed_training_photos(StandInTeacher(), study["train_csv"], tmp_path / "nowhere", progress=False, log=None)


def test_training_keys_need_the_photo_column():
    rows = pd.DataFrame({"dataset": ["lfw", "celeba"], "image": ["A/a.jpg", "1/2.jpg"]})
    assert training_keys(rows) == ["lfw/A/a.jpg", "celeba/1/2.jpg"]
    with pytest.raises(ValueError, match="dataset and image"):
        training_keys(rows.drop(columns="image"))


@pytest.mark.realdata
def test_dlib_training_pass_on_real_lfw_photos(lfw_root, detector, tmp_path):
    pytest.importorskip("dlib", reason="the optional 'teacher' extra is not installed (pip install -e .[teacher])")
    from conftest import copy_lfw_photos

    from maskstudy.datasets.build import BuildSettings, build_aligned_dataset
    from maskstudy.datasets.protocol import scan_identity_folders
    from maskstudy.teachers import build_teacher

    src = copy_lfw_photos(lfw_root, tmp_path / "src", names=("Aaron_Peirsol", "Abdullah_Gul"), per_person=2)
    data = tmp_path / "data"
    manifest = build_aligned_dataset("lfw", src, scan_identity_folders(src), data, BuildSettings(), detector=detector,
                                     progress=False, log=lambda *_: None, record_skipped_files=False)
    storage.write_json(data / "sources.json", {"lfw": str(src)})
    train_csv = data / "train_clean.csv"
    storage.write_csv(train_csv, manifest[manifest["status"] == "ok"][["dataset", "identity", "image", "aligned",
                                                                       "masked"]])
    teacher = build_teacher("dlib_resnet")
    done = embed_training_photos(teacher, train_csv, data, progress=False, log=None)
    assert done.photos == 4 and done.fallback == 0 and done.photos_per_s > 0
    rows = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    targets = load_training_targets(done.path, rows).embeddings
    similarity = targets @ targets.T
    same = rows["identity"].to_numpy()[:, None] == rows["identity"].to_numpy()[None, :]
    off_diagonal = ~np.eye(len(rows), dtype=bool)
    assert similarity[same & off_diagonal].min() > similarity[~same].max()  # dlib tells the two people apart

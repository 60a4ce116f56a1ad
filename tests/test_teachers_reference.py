"""A teacher as the reference row (maskstudy.study.reference): which photo and box stands for each crop of the
tests, the tables computed exactly as evaluate_model's, coverage counts, and dlib on real photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from test_teachers_training import BOX, LANDMARKS, SEED, StandInTeacher, make_study_data

from maskstudy.core import storage
from maskstudy.datasets import mfr2
from maskstudy.datasets.build import file_seed
from maskstudy.datasets.masked_photos import variant_name
from maskstudy.datasets.pairs import (
    SCENARIOS,
    VARIANT_SCENARIOS,
    scenario_pairs,
    variant_scenario_pairs,
    write_pair_folds,
)
from maskstudy.evaluate import embed_paths
from maskstudy.faces.detect import Detection, file_digest
from maskstudy.faces.masks.drawing import draw_mask
from maskstudy.study import testsets  # testsets.TestSets: pytest would try to collect a bare TestSets
from maskstudy.study.reference import (
    crops_of_tests,
    detected_boxes,
    evaluate_embeddings,
    evaluate_teacher,
    lfw_crop_photos,
)


class SizeDetector:
    """A stand-in MTCNN: on a 130 px wide photo no face; elsewhere one face at a fixed share of the photo. Counts the
    photos it looked at."""

    settings = {"detector": "size rule"}

    def __init__(self):
        self.seen = 0

    def detect(self, images):
        self.seen += len(images)
        found = []
        for image in images:
            width, height = image.size
            if width == 130:
                found.append(Detection(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)), None))
            else:
                box = np.array([[0.2 * width, 0.15 * height, 0.8 * width, 0.9 * height]])
                found.append(Detection(box, np.array([0.99]), np.zeros((1, 5, 2)), 0))
        return found


def detector_box(path: Path) -> np.ndarray:
    width, height = Image.open(path).size
    if width == 130:
        return np.full(4, np.nan)
    return np.array([0.2 * width, 0.15 * height, 0.8 * width, 0.9 * height])


def _pairs(manifest: pd.DataFrame) -> pd.DataFrame:
    """Every same-person pair and a few cross-person pairs, in two folds."""
    rows = []
    people = manifest.groupby("identity")["aligned"].apply(list)
    for names in people:
        rows += [(names[i], names[j], 1) for i in range(len(names)) for j in range(i + 1, len(names))]
    identities = list(people.index)
    for k, identity in enumerate(identities):
        other = identities[(k + 1) % len(identities)]
        rows += [(people[identity][m], people[other][m], 0) for m in range(2)]
    frame = pd.DataFrame(rows, columns=["image_a", "image_b", "label"])
    frame.insert(0, "fold", np.arange(len(frame)) % 2 + 1)
    return frame


def _mfr2(root: Path) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """An MFR2-like folder (3 people x 2 photos, the second masked) and its prepared crops."""
    source, out = root / "mfr2_src", root / "data" / "mfr2"
    photos, rng = [], np.random.default_rng(5)
    for k in range(3):
        name = f"Real_{k}"
        for i in (1, 2):
            image = mfr2.image_name(name, i)
            size = (130, 120) if (k, i) == (2, 2) else (120, 120)
            pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
            storage.save_image(source / image, Image.fromarray(pixels))
            aligned = mfr2.aligned_name(image)
            storage.save_image(out / "aligned" / aligned, Image.fromarray(pixels[:112, :112]))
            photos.append({"image": image, "identity": name, "mask_type": "surgical" if i == 2 else "no-mask",
                           "masked": i == 2, "sha1": file_digest(source / image), "aligned": aligned,
                           "face_found": size[0] != 130, "fallback": size[0] == 130})
    photos = pd.DataFrame(photos)
    pairs = pd.DataFrame({"fold": [1, 1, 2, 2], "identity_a": ["Real_0", "Real_1", "Real_2", "Real_0"],
                          "image_a": [mfr2.image_name("Real_0", 1), mfr2.image_name("Real_1", 1),
                                      mfr2.image_name("Real_2", 1), mfr2.image_name("Real_0", 2)],
                          "identity_b": ["Real_0", "Real_1", "Real_2", "Real_1"],
                          "image_b": [mfr2.image_name("Real_0", 2), mfr2.image_name("Real_1", 2),
                                      mfr2.image_name("Real_2", 2), mfr2.image_name("Real_1", 2)],
                          "label": [1, 1, 1, 0]})
    return source, photos, mfr2.protocol_pairs(pairs, photos)


@pytest.fixture
def study(tmp_path) -> dict:
    made = make_study_data(tmp_path, n_people=4, per_person=3)
    data, manifest = made["data"], made["manifest"]
    pairs = _pairs(manifest)
    for scenario in SCENARIOS:
        write_pair_folds(scenario_pairs(pairs, scenario, seed=SEED), data / "lfw" / "pairs" / f"{scenario}.csv")
    for scenario in VARIANT_SCENARIOS:
        write_pair_folds(variant_scenario_pairs(pairs, scenario, seed=SEED), data / "lfw" / "pairs" / f"{scenario}.csv")
    tests = testsets.TestSets.from_run(data, manifest, set(manifest["identity"]))
    tests.mfr2_root = data / "mfr2"
    made["mfr2_source"], tests.mfr2_photos, tests.mfr2_pairs = _mfr2(tmp_path)
    return {**made, "tests": tests}


def expected_photo(rel: str, study: dict) -> tuple[Path, np.ndarray]:
    """The photo and box a crop stands for, written out from the rules (independently of the module)."""
    data, src = study["data"] / "lfw", study["src"]
    suffixes = {"unseen_detected": "_mask_unseen_det", "unseen": "_mask_unseen", "detected_eyes": "_mask_deteyes",
                "detected": "_mask_det", "shared": "_mask", "clean": ""}  # longest first: the first match is it
    variant = next(v for v, suffix in suffixes.items() if rel.endswith(suffix + ".jpg"))
    base = rel[: len(rel) - len(suffixes[variant] + ".jpg")] + ".jpg"
    fallback = base == "Person_0/Person_0_0003.jpg"
    box = np.full(4, np.nan) if fallback else np.array(BOX)
    masked_photo = data / "masked_photos" / base.replace(".jpg", "_mask.jpg")
    unseen_photo = masked_photo if fallback else data / "masked_photos" / variant_name(base, "unseen")
    if variant == "clean":
        return src / base, box
    if variant == "shared":
        return masked_photo, box
    if variant == "unseen":
        return unseen_photo, box
    if fallback:  # detected variants of a fallback row: its twin crop, detected by itself
        photo = data / "aligned" / base.replace(".jpg", "_mask.jpg")
    else:
        photo = unseen_photo if variant == "unseen_detected" else masked_photo
    return photo, detector_box(photo)


# ---------------------------------------------------------------------------------------------


def test_each_crop_maps_to_its_photo_and_box(study):
    rels = crops_of_tests(study["tests"])
    table = lfw_crop_photos(rels, study["data"], study["src"])
    assert table["rel"].tolist() == rels and set(table["variant"]) == {"clean", "shared", "detected", "detected_eyes",
                                                                       "unseen", "unseen_detected"}
    for row in table.to_dict("records"):
        photo, box = expected_photo(row["rel"], study)
        assert Path(row["photo"]) == photo, row["rel"]
        if not row["detect"]:
            np.testing.assert_array_equal([row[c] for c in ("box_x1", "box_y1", "box_x2", "box_y2")], box)
    assert not table["redrawn"].any()
    with pytest.raises(KeyError, match="come from no row.*Nobody"):
        lfw_crop_photos(["Nobody/Nobody_0001.jpg"], study["data"], study["src"])


def test_teacher_scores_every_pair_with_the_right_photos(study):
    teacher, detector = StandInTeacher(), SizeDetector()
    lines = []
    results = evaluate_teacher(teacher, study["tests"], study["data"], mfr2_source=study["mfr2_source"],
                               detector=detector, n_boot=50, progress=False, log=lines.append)
    reference = StandInTeacher()

    def embedding(photo: Path, box: np.ndarray) -> np.ndarray:
        return reference.embed_files([photo], box[None, :]).embeddings[0].astype(np.float64)

    for scenario in study["tests"].scenarios:
        pairs = pd.read_csv(study["data"] / "lfw" / "pairs" / f"{scenario}.csv")
        expected = [embedding(*expected_photo(a, study)) @ embedding(*expected_photo(b, study))
                    for a, b in zip(pairs["a"], pairs["b"])]
        np.testing.assert_allclose(results.per_pair[scenario]["scores"], expected, rtol=1e-5, err_msg=scenario)
    mfr2_pairs = study["tests"].mfr2_pairs
    image_of = study["tests"].mfr2_photos.set_index("aligned")["image"]
    expected = []
    for a, b in zip(mfr2_pairs["a"], mfr2_pairs["b"]):
        pa, pb = study["mfr2_source"] / image_of[a], study["mfr2_source"] / image_of[b]
        expected.append(embedding(pa, detector_box(pa)) @ embedding(pb, detector_box(pb)))
    np.testing.assert_allclose(results.per_pair["mfr2"]["scores"], expected, rtol=1e-5)

    assert list(results.verification["scenario"]) == study["tests"].scenarios
    assert results.identification["probes"] > 0 and results.mfr2["pairs"] == 4
    coverage = results.coverage.set_index("test_set")
    assert coverage.loc["lfw unmasked", "fallback"] == 1  # the fallback-aligned row: centre square
    assert coverage.loc["lfw masked detected", "face_box"] < coverage.loc["lfw masked detected", "crops"]
    assert coverage.loc["mfr2", "fallback"] == 1 and coverage.loc["mfr2", "detected_on_photo"]
    assert any("mfr2" in line and "centre-square fallbacks" in line for line in lines)

    # everything is cached: a second teacher run detects and embeds nothing
    again_teacher, again_detector = StandInTeacher(), SizeDetector()
    again = evaluate_teacher(again_teacher, study["tests"], study["data"], mfr2_source=study["mfr2_source"],
                             detector=again_detector, n_boot=50, progress=False, log=None)
    assert again_teacher.embedded == 0 and again_detector.seen == 0
    pd.testing.assert_frame_equal(again.verification, results.verification)


def test_masked_photos_the_build_did_not_keep_are_drawn_again(study):
    rel = "Person_1/Person_1_0002_mask.jpg"
    saved = study["data"] / "lfw" / "masked_photos" / rel
    saved.unlink()
    table = lfw_crop_photos([rel, variant_name("Person_1/Person_1_0002.jpg", "detected")], study["data"],
                            study["src"])
    assert table["redrawn"].all() and table["photo"].nunique() == 1
    row = study["manifest"].set_index("image").loc["Person_1/Person_1_0002.jpg"]
    drawn = draw_mask(Image.open(study["src"] / "Person_1/Person_1_0002.jpg").convert("RGB"), LANDMARKS,
                      row["mask_style"], seed=int(file_seed("Person_1/Person_1_0002.jpg", SEED)))
    np.testing.assert_array_equal(np.asarray(Image.open(table["photo"].iloc[0])), np.asarray(drawn))
    results = evaluate_teacher(StandInTeacher(), study["tests"], study["data"], detector=SizeDetector(),
                               use_mfr2=False, n_boot=20, progress=False, log=None)
    assert results.coverage.set_index("test_set").loc["lfw masked (clean photo's box)", "redrawn"] >= 1
    assert results.mfr2 is None


def test_tables_equal_evaluate_models_for_the_same_embeddings(study):
    """evaluate_embeddings is evaluate_model with the embeddings given: same numbers for a model's own."""
    from maskstudy.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("ir18", width=0.125, input_size=32, embedding_size=16).eval()
    tests = study["tests"]
    expected = testsets.evaluate_model(model, 32, tests, n_boot=100, seed=3)
    lfw = embed_paths(model, 32, crops_of_tests(tests), tests.aligned_root, {})
    mfr2_embeddings = embed_paths(model, 32, list(tests.mfr2_pairs["a"]) + list(tests.mfr2_pairs["b"]),
                                  tests.mfr2_root / "aligned", {})
    got = evaluate_embeddings(tests, lfw, mfr2_embeddings, n_boot=100, seed=3)
    pd.testing.assert_frame_equal(got.verification, expected.verification)
    pd.testing.assert_frame_equal(got.fnmr, expected.fnmr)
    assert got.identification == expected.identification
    pd.testing.assert_series_equal(pd.Series(got.mfr2), pd.Series(expected.mfr2))  # NaN where a pair kind is absent
    for scenario, result in expected.per_pair.items():
        np.testing.assert_allclose(got.per_pair[scenario]["scores"], result["scores"], rtol=1e-6)  # batches differ
    with pytest.raises(KeyError, match="have no embedding"):
        evaluate_embeddings(tests, dict(list(lfw.items())[:-1]), mfr2_embeddings, n_boot=10)
    with pytest.raises(ValueError, match="no MFR2 embeddings"):
        evaluate_embeddings(tests, lfw, None, n_boot=10)


def test_detected_boxes_are_cached_by_digest_and_settings(tmp_path):
    paths = []
    for i, width in enumerate((120, 130, 120)):
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (width, 120), (10 * i, 50, 90)).save(path)
        paths.append(path)
    detector = SizeDetector()
    boxes, found = detected_boxes(paths, detector, tmp_path / "cache", progress=False)
    assert found.tolist() == [True, False, True] and detector.seen == 3 and np.isnan(boxes[1]).all()
    np.testing.assert_allclose(boxes[0], [24, 18, 96, 108])
    again = SizeDetector()
    np.testing.assert_array_equal(detected_boxes(paths, again, tmp_path / "cache", progress=False)[0], boxes)
    assert again.seen == 0
    other = SizeDetector()
    other.settings = {"detector": "another rule"}
    detected_boxes(paths, other, tmp_path / "cache", progress=False)
    assert other.seen == 3


@pytest.mark.realdata
def test_dlib_reference_on_real_photos(lfw_root, detector, tmp_path):
    """dlib on a few real LFW photos through the whole path (data build, masked variants, pairs, tables)."""
    pytest.importorskip("dlib", reason="the optional 'teacher' extra is not installed (pip install -e .[teacher])")
    from conftest import copy_lfw_photos

    from maskstudy.datasets.build import BuildSettings, build_aligned_dataset
    from maskstudy.datasets.masked_photos import build_masked_variants
    from maskstudy.datasets.protocol import scan_identity_folders
    from maskstudy.teachers import build_teacher

    src = copy_lfw_photos(lfw_root, tmp_path / "src", names=("Aaron_Peirsol", "Abdullah_Gul", "Adrien_Brody"),
                          per_person=2)
    data = tmp_path / "data"
    quiet = {"progress": False, "log": lambda *_: None}
    manifest = build_aligned_dataset("lfw", src, scan_identity_folders(src), data, BuildSettings(), detector=detector,
                                     record_skipped_files=False, **quiet)
    build_masked_variants(manifest, src, data / "lfw", detector, **quiet)
    storage.write_json(data / "sources.json", {"lfw": str(src)})
    ok = manifest[manifest["aligned"] != ""]
    names = ok.groupby("identity")["aligned"].apply(list)
    pairs = pd.DataFrame([(n[0], n[1], 1) for n in names] +
                         [(names.iloc[k][0], names.iloc[(k + 1) % len(names)][1], 0) for k in range(len(names))],
                         columns=["image_a", "image_b", "label"])
    pairs.insert(0, "fold", np.arange(len(pairs)) % 2 + 1)  # thresholds come from the other fold
    for scenario in SCENARIOS:
        write_pair_folds(scenario_pairs(pairs, scenario), data / "lfw" / "pairs" / f"{scenario}.csv")
    write_pair_folds(variant_scenario_pairs(pairs, "masked_unmasked_detected"),
                     data / "lfw" / "pairs" / "masked_unmasked_detected.csv")
    tests = testsets.TestSets.from_run(data, ok, set(ok["identity"]))
    results = evaluate_teacher(build_teacher("dlib_resnet", detector=detector), tests, data, n_boot=20,
                               progress=False, log=None)
    scores = results.per_pair["unmasked_unmasked"]
    assert scores["scores"][scores["labels"] == 1].min() > scores["scores"][scores["labels"] == 0].max()
    assert set(results.verification["scenario"]) == {*SCENARIOS, "masked_unmasked_detected"}
    assert results.coverage["fallback"].sum() <= 1 and results.identification["probes"] == 3

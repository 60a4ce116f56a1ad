"""A data build that stops (an exception, or ``kill -9``) loses no finished photo: the rerun detects only the others
and ends with the manifest and files of a build that never stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from maskstudy.core.storage import append_json_lines, read_json_lines
from maskstudy.datasets.build import BuildSettings, build_aligned_dataset, read_manifest
from maskstudy.datasets.protocol import scan_identity_folders
from tests.conftest import REPO, TemplateDetector

BATCH = 4


@pytest.fixture(scope="module")
def photos(synthetic_photos) -> Path:
    return synthetic_photos


def build(photos: Path, out: Path, detector, **kwargs) -> pd.DataFrame:
    return build_aligned_dataset("toy", photos, scan_identity_folders(photos), out, BuildSettings(), detector=detector,
                                 batch_size=BATCH, progress=False, log=lambda *_: None, **kwargs)


def written_files(out: Path) -> dict[str, bytes]:
    folder = out / "toy"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".csv" and p.suffix != ".json"}


@pytest.fixture(scope="module")
def uninterrupted(photos, tmp_path_factory) -> tuple[pd.DataFrame, dict[str, bytes], int]:
    """The manifest and files of a build that runs through, and how many photos it detected."""
    out = tmp_path_factory.mktemp("uninterrupted")
    detector = TemplateDetector()
    build(photos, out, detector)
    manifest = read_manifest(out / "toy" / "manifest.csv")
    assert set(manifest["status"]) >= {"ok", "low_prob", "no_face", "skipped"}  # the stand-in's variety
    return manifest, written_files(out), detector.seen


def assert_same_build(out: Path, uninterrupted) -> None:
    manifest, files, _ = uninterrupted
    pd.testing.assert_frame_equal(read_manifest(out / "toy" / "manifest.csv"), manifest, check_dtype=False)
    assert written_files(out) == files
    assert not (out / "toy" / "manifest.journal").exists()


class StopAfter(TemplateDetector):
    """Raises ``KeyboardInterrupt`` (Ctrl-C) when asked for more than ``limit`` photos in all."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def detect(self, images):
        if self.seen + len(images) > self.limit:
            raise KeyboardInterrupt
        return super().detect(images)


def test_a_build_stopped_by_an_exception_keeps_every_finished_photo(photos, uninterrupted, tmp_path):
    out = tmp_path / "out"
    stopped = StopAfter(2 * BATCH + 1)
    with pytest.raises(KeyboardInterrupt):  # no manifest checkpoint: the journal alone keeps the rows
        build(photos, out, stopped, checkpoint_every=100)
    assert not (out / "toy" / "manifest.csv").exists()
    assert len(read_json_lines(out / "toy" / "manifest.journal")) == 1 + 2 * BATCH  # settings + the 8 rows
    rerun = TemplateDetector()
    build(photos, out, rerun)
    assert rerun.seen == uninterrupted[2] - 2 * BATCH
    assert_same_build(out, uninterrupted)


def test_a_checkpoint_empties_the_journal_and_a_rerun_uses_both(photos, uninterrupted, tmp_path):
    out = tmp_path / "out"
    stopped = StopAfter(3 * BATCH + 1)
    with pytest.raises(KeyboardInterrupt):
        build(photos, out, stopped, checkpoint_every=2)
    assert len(read_manifest(out / "toy" / "manifest.csv").query("status != 'skipped'")) == 2 * BATCH
    assert len(read_json_lines(out / "toy" / "manifest.journal")) == 1 + BATCH  # the batch after the checkpoint
    rerun = TemplateDetector()
    build(photos, out, rerun)
    assert rerun.seen == uninterrupted[2] - 3 * BATCH
    assert_same_build(out, uninterrupted)


KILLED_BUILD = """
import os, signal, sys
from pathlib import Path

from maskstudy.datasets.build import BuildSettings, build_aligned_dataset
from maskstudy.datasets.protocol import scan_identity_folders
from tests.conftest import TemplateDetector


class Killed(TemplateDetector):
    def detect(self, images):
        if self.seen >= int(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().detect(images)


photos, out = Path(sys.argv[1]), Path(sys.argv[2])
build_aligned_dataset("toy", photos, scan_identity_folders(photos), out, BuildSettings(), detector=Killed(),
                      batch_size=int(sys.argv[4]), checkpoint_every=100, progress=False, log=lambda *_: None)
"""


def test_a_build_killed_with_sigkill_resumes_with_what_it_finished(photos, uninterrupted, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(photos), str(out), str(3 * BATCH), str(BATCH)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journaled = read_json_lines(out / "toy" / "manifest.journal")[1:]
    # three batches detected; the crops of at most two batches may still have been on their way to disk
    assert BATCH <= len(journaled) <= 3 * BATCH
    for row in journaled:
        if row["status"] == "ok":
            assert (out / "toy" / "aligned" / row["aligned"]).is_file()
    rerun = TemplateDetector()
    build(photos, out, rerun)
    assert rerun.seen == uninterrupted[2] - len(journaled)
    assert_same_build(out, uninterrupted)


def test_a_rerun_removes_the_temp_files_a_killed_build_was_writing(photos, uninterrupted, tmp_path):
    """A kill between an atomic write's temp file and its rename leaves ``.<name>.<random>.tmp`` beside the crops
    (seen in about 1 run of 6 of the SIGKILL test above); the next build removes it."""
    from maskstudy.datasets.masked_photos import build_masked_variants

    out = tmp_path / "out"
    manifest = build(photos, out, TemplateDetector())
    stale = [out / "toy" / "aligned" / "id1" / ".img3.jpg.0s87kyi6.tmp", out / "toy" / "masked_photos" / ".x.jpg.1.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    build(photos, out, TemplateDetector())
    assert not any(p.exists() for p in stale)
    assert_same_build(out, uninterrupted)
    stale[0].write_bytes(b"")
    build_masked_variants(manifest, photos, out / "toy", TemplateDetector(), unseen_styles=(), batch_size=BATCH,
                          progress=False, log=lambda *_: None)
    assert not stale[0].exists()


def test_a_journal_line_cut_short_by_a_kill_is_skipped(tmp_path):
    journal = tmp_path / "journal"
    append_json_lines(journal, [{"a": 1}, {"b": 2.5, "c": float("nan")}])
    with open(journal, "a", encoding="utf-8") as handle:
        handle.write('{"d": 1.2')  # killed mid-write
    assert [sorted(r) for r in read_json_lines(journal)] == [["a"], ["b", "c"]]
    append_json_lines(journal, [{"e": "\u00e9\n"}])  # the next run's rows are whole again
    assert read_json_lines(journal)[-1] == {"e": "\u00e9\n"} and len(read_json_lines(journal)) == 3


def test_masked_variants_stopped_by_an_exception_keep_every_finished_photo(photos, tmp_path):
    from maskstudy.datasets.masked_photos import build_masked_variants

    manifest = build(photos, tmp_path / "data", TemplateDetector())
    kwargs = dict(unseen_styles=(), batch_size=BATCH, progress=False, log=lambda *_: None)
    reference = build_masked_variants(manifest, photos, tmp_path / "data" / "toy", TemplateDetector(), **kwargs)
    total = len(reference)
    (tmp_path / "data" / "toy" / "masked_variants.csv").unlink()
    with pytest.raises(KeyboardInterrupt):
        build_masked_variants(manifest, photos, tmp_path / "data" / "toy", StopAfter(2 * BATCH + 1), **kwargs)
    assert len(read_json_lines(tmp_path / "data" / "toy" / "masked_variants.journal")) == 2 * BATCH
    rerun = TemplateDetector()
    again = build_masked_variants(manifest, photos, tmp_path / "data" / "toy", rerun, **kwargs)
    assert rerun.seen == total - 2 * BATCH
    pd.testing.assert_frame_equal(again, reference)
    assert not (tmp_path / "data" / "toy" / "masked_variants.journal").exists()

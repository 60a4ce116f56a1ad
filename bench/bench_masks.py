"""Benchmark: drawing the synthetic face masks (:func:`maskstudy.faces.masks.drawing.draw_mask`) against the drawing before it was
made faster (the frozen copy in tests/masks_reference.py), in one run.

    python bench/bench_masks.py --out reports/bench     # the 40 LFW faces of the fixture x 6 styles, 5 rounds
    python bench/bench_masks.py --faces 12 --rounds 2   # a quick look

The faces are the LFW photos and MTCNN landmarks of tests/data/lfw_mask_landmarks.json. Every round draws every
style on every face with both implementations, taking turns style by style (all faces with one, then with the
other, the first alternating between rounds; ``--alternate photo``: turns photo by photo), so that a change of
the machine's load weighs on both alike; numpy runs single-threaded. Reported per style and over all: CPU
(process) and wall milliseconds per drawing, the ratio old / new (of the totals, and the median of the rounds'
ratios), page faults per drawing, and the largest difference between the two drawings in grey levels. On a
shared machine only the ratios measured in one run mean anything.

Turns photo by photo make each new drawing follow an old one, whose tens of megabytes of arrays leave the caches
cold: that measures the new drawing after the old one, not after the build's other work, and gives a lower ratio.
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskstudy.core import storage
from maskstudy.datasets.build import find_dataset
from maskstudy.faces.masks.drawing import MASK_STYLES, draw_mask
from maskstudy.report import outputs
from tests import masks_reference

FIXTURE = REPO / "tests" / "data" / "lfw_mask_landmarks.json"


def load_faces(lfw: Path, count: int) -> list[tuple[Image.Image, np.ndarray]]:
    faces = json.loads(FIXTURE.read_text())["faces"][:count]
    return [(Image.open(lfw / face["photo"]).convert("RGB"), np.asarray(face["landmarks"], float)) for face in faces]


def timed(function, *args, **kwargs) -> tuple[float, float, int]:
    """CPU and wall seconds of one call, and the page faults it took (fresh memory: a large part of the cost)."""
    faults, cpu, wall = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time(), time.perf_counter()
    function(*args, **kwargs)
    return (time.process_time() - cpu, time.perf_counter() - wall,
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)


def largest_difference(image, landmarks, style: str, seed: int) -> int:
    new = np.asarray(draw_mask(image, landmarks, style, seed=seed), dtype=np.int16)
    old = np.asarray(masks_reference.draw_mask(image, landmarks, style, seed=seed), dtype=np.int16)
    return int(np.abs(new - old).max())


def measure(faces: list, styles: list[str], rounds: int, alternate: str = "style", log=print) -> pd.DataFrame:
    """Per style and round: summed CPU / wall seconds of the old and the new drawing, the two taking turns
    photo by photo (``alternate="photo"``) or style by style (``"style"``: all photos with one, then the other)."""
    implementations = {"old": masks_reference.draw_mask, "new": draw_mask}
    for style in styles:  # warm-up (caches, allocator)
        for draw in implementations.values():
            draw(*faces[0], style, seed=0)
    records = []
    for r in range(rounds):
        for style in styles:
            spent = {f"{name}_{clock}": 0.0 for name in implementations for clock in ("cpu", "wall", "faults")}
            if alternate == "photo":
                turns = [(name, k) for k in range(len(faces))
                         for name in (("old", "new") if (r + k) % 2 == 0 else ("new", "old"))]
            else:
                turns = [(name, k) for name in (("old", "new") if r % 2 == 0 else ("new", "old"))
                         for k in range(len(faces))]
            for name, k in turns:
                image, landmarks = faces[k]
                cpu, wall, faults = timed(implementations[name], image, landmarks, style, seed=k)
                spent[f"{name}_cpu"] += cpu
                spent[f"{name}_wall"] += wall
                spent[f"{name}_faults"] += faults
            records.append({"round": r, "style": style, **spent})
        log(f"round {r + 1}/{rounds}: old {sum(x['old_cpu'] for x in records if x['round'] == r):.2f} s, "
            f"new {sum(x['new_cpu'] for x in records if x['round'] == r):.2f} s of CPU")
    return pd.DataFrame(records)


def summarise(records: pd.DataFrame, drawings_per_round: dict[str, int]) -> pd.DataFrame:
    rows = []
    groups = [(style, part) for style, part in records.groupby("style")] + [("all styles", records)]
    for style, part in groups:
        n = sum(drawings_per_round[s] for s in part["style"].unique()) * part["round"].nunique()
        per_round = part.groupby("round")[["old_cpu", "new_cpu"]].sum()
        rows.append({
            "style": style,
            "old ms (cpu)": 1e3 * part["old_cpu"].sum() / n,
            "new ms (cpu)": 1e3 * part["new_cpu"].sum() / n,
            "ratio (cpu)": part["old_cpu"].sum() / part["new_cpu"].sum(),
            "median round ratio (cpu)": float((per_round["old_cpu"] / per_round["new_cpu"]).median()),
            "old ms (wall)": 1e3 * part["old_wall"].sum() / n,
            "new ms (wall)": 1e3 * part["new_wall"].sum() / n,
            "ratio (wall)": part["old_wall"].sum() / part["new_wall"].sum(),
            "old page faults": part["old_faults"].sum() / n,
            "new page faults": part["new_faults"].sum() / n,
        })
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lfw", default=None, help="LFW folder (default: $MASKSTUDY_LFW or ../shared/data/lfw)")
    parser.add_argument("--faces", type=int, default=40, help="faces of the fixture to draw on (at most 40)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--alternate", choices=("style", "photo"), default="style",
                        help="old and new take turns photo by photo, or style by style")
    parser.add_argument("--out", default=None, help="folder for bench_masks.json / .md (default: print only)")
    args = parser.parse_args(argv)
    lfw = find_dataset("lfw", args.lfw)
    if lfw is None:
        parser.error("LFW not found: pass --lfw or set MASKSTUDY_LFW")
    faces = load_faces(Path(lfw), args.faces)
    styles = sorted(MASK_STYLES)

    differences = {style: max(largest_difference(image, lm, style, k) for k, (image, lm) in enumerate(faces))
                   for style in styles}
    records = measure(faces, styles, args.rounds, args.alternate)
    table = summarise(records, {style: len(faces) for style in styles})
    table["largest difference (grey levels)"] = [differences.get(s, max(differences.values())) for s in table["style"]]
    text = (f"# Mask drawing benchmark\n\n{len(faces)} LFW faces x {len(styles)} styles, {args.rounds} interleaved "
            f"rounds (turns: {args.alternate} by {args.alternate}), single-threaded; old = tests/masks_reference.py, new = maskstudy.faces.masks.drawing.draw_mask. One run: "
            "only the ratios are comparable across machines.\n\n" + outputs.to_markdown(table) + "\n")
    print(text)
    if args.out:
        out = Path(args.out)
        storage.write_json(out / "bench_masks.json", {"faces": len(faces), "rounds": args.rounds,
                                                      "summary": table.to_dict("records"),
                                                      "rounds_detail": records.to_dict("records")})
        storage.write_text(out / "bench_masks.md", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

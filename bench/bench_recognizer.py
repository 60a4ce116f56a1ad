"""Benchmark: what one photo costs through ``python -m maskstudy compare`` / ``verify``, per kind of model.

Per photo, on this machine: reading and detecting + aligning it (MTCNN, the build's settings), then encoding the
aligned crop with each kind of network of the study (:mod:`maskstudy.models.model_file`): a from-scratch IR-ResNet
of the profile (flip fusion), dlib's ResNet-29 as it is, one of its fine-tunes (through the frozen stages, rounded as
the study caches them), and the mask-aware recogniser (two fine-tunes and the mask detector). The run's model files
are used where they exist (``--run reports/cpu``), else untrained stand-ins of the same shapes (the cost does not
depend on the weights). Timing: photos in batches of ``--batch``, the best of ``--repeats`` rounds, after a warm-up.
Writes ``recognizer.md`` under ``--out``.

    python bench/bench_recognizer.py --run reports/cpu --out reports/cpu/bench
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch


def _photos(lfw_root: Path, count: int) -> list[Path]:
    photos = sorted(lfw_root.glob("*/*.jpg"))
    step = max(1, len(photos) // count)
    return photos[::step][:count]


def _best(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def _models(run: Path, config: dict) -> dict:
    """Kind -> loaded model: the run's files where they exist, else untrained stand-ins."""
    from maskstudy.core.profiles import train_settings
    from maskstudy.models import build_backbone
    from maskstudy.models.dlib_resnet import student_network
    from maskstudy.models.mask_aware import Fusion, MaskAwareRecognizer, MaskPresenceHead
    from maskstudy.models.model_file import LoadedModel, load_model
    from maskstudy.study import design
    from maskstudy.study.mask_aware import model_file
    from maskstudy.study.pretrained_track import checkpoint

    outputs = run / "outputs"
    main = int(config["seed"])
    files = {"from scratch (plain)": design.checkpoint(outputs, design.PLAIN),
             "fine-tuned (whole face)": checkpoint(outputs, f"{design.TRACK_MODELS['none']}_seed{main}"),
             "mask-aware": model_file(outputs)}
    models = {"pretrained as it is": load_model("pretrained")}
    for kind, path in files.items():
        if path.is_file():
            models[kind] = load_model(path)
            continue
        if kind.startswith("from scratch"):
            s = train_settings(config, "none")
            net = build_backbone(s["backbone"], width=s["width"], input_size=s["input_size"],
                                 embedding_size=s["embedding_size"]).eval()
            models[kind] = LoadedModel("scratch", net, s["input_size"])
        elif kind.startswith("fine-tuned"):
            models[kind] = LoadedModel("finetuned", student_network().eval(), 112, flip=False, prefix_stages=3)
        else:
            net = MaskAwareRecognizer(student_network(), student_network(blank_lower=True), MaskPresenceHead(),
                                      Fusion(), 3).eval()
            models[kind] = LoadedModel("mask_aware", net, 112, flip=False, similarity=net.similarity)
    return models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="reports/cpu", help="run folder whose model files are timed")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--photos", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="reports/bench")
    args = parser.parse_args()
    from maskstudy.core import storage
    from maskstudy.core.allocator import keep_freed_memory
    from maskstudy.core.profiles import resolve_config
    from maskstudy.datasets.build import find_dataset
    from maskstudy.evaluate.embed import embed_crops
    from maskstudy.evaluate.recognizer import FaceRecognizer
    from maskstudy.report.outputs import to_markdown

    keep_freed_memory()
    config = resolve_config(args.profile)
    lfw = find_dataset("lfw", config["lfw_root"])
    if lfw is None:
        raise SystemExit("LFW not found (set MASKSTUDY_LFW)")
    photos = _photos(lfw, args.photos)
    models = _models(Path(args.run), config)
    aligner = FaceRecognizer(models["pretrained as it is"].model, 112, device="cpu", batch_size=args.batch)
    crops = aligner.align(photos)[0]

    def align():
        for start in range(0, len(photos), args.batch):
            aligner.align(photos[start:start + args.batch])

    rows = [{"step": "read, detect and align (MTCNN, the build's settings)", "kind": "",
             "ms_per_photo": 1000 * _best(align, args.repeats) / len(photos)}]
    for kind, loaded in models.items():
        loaded.to("cpu")
        seconds = _best(lambda loaded=loaded: loaded.encode(crops, args.batch, "cpu", embed=embed_crops), args.repeats)
        rows.append({"step": f"encode: {kind}", "kind": loaded.kind, "ms_per_photo": 1000 * seconds / len(photos),
                     "model_file": Path(loaded.path).name if loaded.path else "(stand-in)"})
    table = pd.DataFrame(rows)
    align_ms = table["ms_per_photo"].iloc[0]
    table["with_detection_ms"] = table["ms_per_photo"].where(table["kind"] == "", table["ms_per_photo"] + align_ms)
    text = (f"### Recognizer cost per photo\n\n{len(photos)} LFW photos in batches of {args.batch}, best of "
            f"{args.repeats} rounds; CPU, {torch.get_num_threads()} torch threads. `with_detection_ms`: what "
            "`compare` or `verify` spend per raw photo with that model. One run: only ratios carry across "
            "machines.\n\n" + to_markdown(table.round(2)) + "\n")
    out = Path(args.out)
    storage.write_bytes(out / "recognizer.md", text.encode("utf-8"))
    print(text)


if __name__ == "__main__":
    main()

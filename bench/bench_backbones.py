"""Benchmark: training and evaluation throughput of the study's backbones, against the machine's matmul rate.

One run measures, on this machine and at a profile's sizes (``maskstudy.core.profiles``; default: the ``cpu`` profile on
a CPU, ``gpu`` with CUDA):

* the dense matmul rate (fp32 on the CPU, bf16 on CUDA), GFLOP/s;
* per variant -- the IR-ResNet plain, SE and CBAM (``train_backbone``, ``train_width``, ``train_input_size``,
  ``train_batch_size``) and the ViT and hybrid CNN+ViT of notebook 04 -- training throughput (images/s) of the
  training loop's own step (:class:`maskstudy.train.step.TrainingStep`: augmentation, forward, margin loss,
  backward, gradient clipping, optimizer step) with the profile's runtime settings, its achieved FLOP rate
  (3x the forward FLOPs per image, the usual forward + backward estimate) as a share of the matmul rate, the
  cost of SE and CBAM relative to plain, and evaluation throughput (crops/s of
  :func:`maskstudy.evaluate.embed_crops`, flip fusion included: two forward passes per crop);
* with ``--levers``, the same for the plain / SE / CBAM networks with each lever of the training step and of
  evaluation changed in turn: channels_last toggled against the default in force (on), autograd's reference
  backward instead of the fused one; in evaluation contiguous memory, unfolded BatchNorm, and whole batches in one
  forward pass instead of :func:`maskstudy.evaluate.embed.forward_chunk` images;
* with ``--compile``, training and evaluation with ``torch.compile`` (compile time reported separately);
* with ``--loop``, the training loop as the study runs it (:func:`maskstudy.train.train`: the dataset decoded into
  memory, each epoch's plan, the step, the progress bar, the per-epoch validation and checkpoint) for the plain
  network on synthetic crops written to disk, its rate against the bare step's ("notebook loop / bench step");
* with ``--evaluation DATA_DIR`` (a finished build, e.g. ``data/processed``), the evaluation of one model (plain,
  untrained) on every test of the study as notebook 03 runs it: LFW scenarios and variants, FNMR, identification,
  MFR2, in seconds (no embedding store: every crop embedded).

Timing: every measurement is a window of ``--seconds``; windows of all measurements are interleaved in
``--repeats`` rounds and each keeps its best round, so that a shared, busy CPU (other processes) disturbs the
ratios as little as possible. Rates are given by wall clock and by process CPU time (CPU seconds of this
process: on a machine shared with other work, the CPU-time rate is what the process achieves while it runs;
with several threads it also counts threads that wait). Writes ``bench.json`` and ``bench.md`` under ``--out``.

    python bench/bench_backbones.py --out reports/cpu/bench            # cpu profile, torch's threads
    python bench/bench_backbones.py --quick --threads 2 --levers --out /tmp/bench
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from maskstudy.core import profiles, storage
from maskstudy.core.compilation import CompiledOrEager
from maskstudy.evaluate.embed import embed_crops
from maskstudy.models import count_flops
from maskstudy.models.attention import reference_backward
from maskstudy.report import outputs
from maskstudy.train.config import TrainConfig
from maskstudy.train.data import EpochPlan
from maskstudy.train.runtime import process_settings, resolve_runtime
from maskstudy.train.step import build_training_step

CROP = 112  # stored crops are 112 px; training and evaluation resize them to the input size


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Measurement:
    """One timed workload: ``run()`` processes ``items`` images; the best window of all rounds is kept."""

    name: str
    run: Callable[[], object]
    items: int
    device: torch.device
    context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    wall_rate: float = 0.0
    cpu_rate: float = 0.0
    windows: list[float] = field(default_factory=list)

    def window(self, seconds: float) -> None:
        with self.context():
            _sync(self.device)
            count, wall0, cpu0 = 0, time.perf_counter(), time.process_time()
            while time.perf_counter() - wall0 < seconds or count < 1:
                self.run()
                count += 1
            _sync(self.device)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        rate = self.items * count / wall
        self.windows.append(rate)
        self.wall_rate = max(self.wall_rate, rate)
        self.cpu_rate = max(self.cpu_rate, self.items * count / max(cpu, 1e-9))


def matmul_workload(device: torch.device, dtype: torch.dtype, size: int) -> Measurement:
    """Square matmuls of ``size``; ``items`` counts FLOPs (2 n^3 each), so the rates are FLOP/s."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    return Measurement("matmul", lambda: a @ b, 2 * size**3, device)


def variant_settings(config: dict, variant: str) -> dict:
    """TrainConfig fields of a variant of the profile: ``plain`` / ``se`` / ``cbam`` (notebook 03) or ``vit`` /
    ``hybrid`` (notebook 04)."""
    if variant in profiles.TRANSFORMER_KEYS:
        return profiles.transformer_settings(config, variant)
    return profiles.train_settings(config, {"plain": "none"}.get(variant, variant))


def synthetic_batch(batch: int, num_classes: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray, EpochPlan]:
    """Random uint8 crops, labels and augmentation draws of one batch (as the loop's epoch plan holds them)."""
    g = torch.Generator().manual_seed(seed)
    crops = torch.randint(0, 256, (batch, CROP, CROP, 3), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, num_classes, (batch,), generator=g).numpy()
    plan = EpochPlan(order=np.arange(batch), masked=np.zeros(batch, bool),
                     flip=(torch.rand(batch, generator=g) < 0.5).numpy(),
                     brightness=(0.9 + 0.2 * torch.rand(batch, generator=g)).numpy().astype(np.float32),
                     contrast=(0.9 + 0.2 * torch.rand(batch, generator=g)).numpy().astype(np.float32))
    return crops, labels, plan


def training_workload(name: str, settings: dict, num_classes: int, device: str, *, reference: bool = False,
                      **changes) -> tuple[Measurement, object]:
    """The training loop's step for ``settings`` (with ``changes``) on a synthetic batch; returns it and the
    step (its raw backbone is reused for evaluation)."""
    config = TrainConfig.from_dict({**settings, "device": device, **changes})
    rt = resolve_runtime(config)
    step = build_training_step(config, rt, num_classes)
    crops, labels, plan = synthetic_batch(config.batch_size, num_classes)
    step.train()

    @contextlib.contextmanager
    def context():
        with process_settings(config, rt), (reference_backward() if reference else contextlib.nullcontext()):
            yield

    with context():
        step(crops, labels, plan, 1e-3)  # warm-up (and, with compile, compilation)
    # a small learning rate keeps the weights near their initialisation over thousands of steps on one batch
    return Measurement(name, lambda: step(crops, labels, plan, 1e-3), config.batch_size, rt.device,
                       context), step


def evaluation_workload(name: str, model: torch.nn.Module, input_size: int, batch: int, *,
                        channels_last: bool | None = None, fold: bool = True,
                        whole_batches: bool = False, compiled: bool = False) -> Measurement:
    """Evaluation embeddings of ``batch`` synthetic crops: :func:`embed_crops`, or with ``channels_last`` /
    ``fold`` / ``whole_batches`` / ``compiled`` given, :func:`compute_embeddings` in that setting (flip fusion,
    normalised, as evaluation; ``compiled``: the folded model through ``torch.compile``, compiled once, before the
    windows)."""
    from maskstudy.evaluate.embed import EVAL_CHANNELS_LAST, compute_embeddings
    from maskstudy.models import fold_batchnorm, model_device

    crops = torch.randint(0, 256, (batch, CROP, CROP, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(1)).numpy()
    # as evaluation gets it from a checkpoint: contiguous weights (a channels-last weight would turn every
    # convolution channels-last whatever the input's format), eval mode
    model = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    device = model_device(model)
    if channels_last is None and fold and not whole_batches and not compiled:
        def run():
            return embed_crops(model, crops, input_size, batch_size=batch)
    else:
        cl = EVAL_CHANNELS_LAST.get(device.type, False) if channels_last is None else channels_last
        compiled_model = CompiledOrEager(fold_batchnorm(model), "evaluation model", dynamic=False) if compiled else None

        def run():
            ready = compiled_model if compiled_model is not None else fold_batchnorm(model) if fold else model
            return compute_embeddings(ready, crops, input_size, batch_size=batch,
                                      flip=True, channels_last=cl, forward_batch=2 * batch if whole_batches else None,
                                      amp_dtype=torch.bfloat16 if device.type == "cuda" else None)
    run()
    return Measurement(name, run, batch, device)


def _row(variant: str, settings: dict, flops: float, train: Measurement, evaluation: Measurement | None,
         peak: Measurement, setting: str = "default") -> dict:
    row = {"variant": variant, "setting": setting, "backbone": settings["backbone"], "width": settings["width"],
           "input_size": settings["input_size"], "batch": settings["batch_size"],
           "gflops_per_image": flops / 1e9,
           "train_img_s": train.wall_rate, "train_img_cpu_s": train.cpu_rate,
           "train_gflop_s": 3 * flops * train.wall_rate / 1e9,
           "share_of_matmul": 3 * flops * train.wall_rate / peak.wall_rate,
           "share_of_matmul_cpu_time": 3 * flops * train.cpu_rate / peak.cpu_rate,
           "train_windows_img_s": [round(r, 1) for r in train.windows]}
    if evaluation is not None:
        row.update(eval_img_s=evaluation.wall_rate, eval_img_cpu_s=evaluation.cpu_rate,
                   eval_windows_img_s=[round(r, 1) for r in evaluation.windows])
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=None, help="sizes of this profile (default: cpu, or gpu with CUDA)")
    parser.add_argument("--variants", nargs="+", default=["plain", "se", "cbam", "vit", "hybrid"],
                        choices=["plain", "se", "cbam", "vit", "hybrid"])
    parser.add_argument("--classes", type=int, default=1000, help="identities of the margin head")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one measuring window")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds; each measurement keeps its best")
    parser.add_argument("--quick", action="store_true",
                        help="short windows, 3 rounds, 64 evaluation crops per call (a smoke run; noisier)")
    parser.add_argument("--levers", action="store_true",
                        help="also plain/SE/CBAM with each training and evaluation speed-up undone")
    parser.add_argument("--compile", action="store_true", help="also plain/SE/CBAM trained and evaluated with torch.compile")
    parser.add_argument("--loop", action="store_true", help="also the study's training loop (plain network)")
    parser.add_argument("--evaluation", default=None, metavar="DATA_DIR",
                        help="also time one model's evaluation on every test of a finished build")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="reports/bench", help="folder for bench.json and bench.md")
    args = parser.parse_args(argv)
    eval_batch = None
    if args.quick:
        args.seconds, args.repeats, eval_batch = min(args.seconds, 0.4), min(args.repeats, 3), 64

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    config = profiles.resolve_config(args.profile or ("gpu" if device.type == "cuda" else "cpu"))
    eval_batch = eval_batch or config["eval_batch_size"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_workload(device, dtype, 4096 if device.type == "cuda" else 1024)
    measurements, rows_spec = [peak], []
    started = time.perf_counter()
    for variant in args.variants:
        settings = variant_settings(config, variant)
        train, step = training_workload(variant, settings, args.classes, str(device))
        evaluation = evaluation_workload(variant, step.raw_backbone, settings["input_size"], eval_batch)
        flops = count_flops(step.raw_backbone, settings["input_size"])
        measurements += [train, evaluation]
        rows_spec.append((variant, settings, flops, train, evaluation, "default"))
        if args.levers and variant in ("plain", "se", "cbam"):
            # channels_last toggled against the default in force (on)
            default_cl = resolve_runtime(TrainConfig.from_dict({**settings, "device": str(device)})).channels_last
            toggled = f"channels_last {'off' if default_cl else 'on'}"
            levers = [(toggled, {"channels_last": not default_cl}, False),
                      ("reference backward", {}, True),
                      (f"{toggled}, reference backward", {"channels_last": not default_cl}, True)]
            for setting, changes, reference in levers:
                lever, _ = training_workload(f"{variant} {setting}", settings, args.classes, str(device),
                                             reference=reference, **changes)
                measurements.append(lever)
                rows_spec.append((variant, settings, flops, lever, None, f"train: {setting}"))
            for setting, kw in [("contiguous", {"channels_last": False}), ("unfolded BN", {"fold": False}),
                                (f"whole batches of {2 * eval_batch}", {"whole_batches": True}),
                                ("all three off", {"channels_last": False, "fold": False, "whole_batches": True})]:
                lever = evaluation_workload(f"{variant} eval {setting}", step.raw_backbone, settings["input_size"],
                                            eval_batch, **kw)
                measurements.append(lever)
                rows_spec.append((variant, settings, flops, None, lever, f"eval: {setting}"))
        if args.compile and variant in ("plain", "se", "cbam"):
            began = time.perf_counter()
            compiled, _ = training_workload(f"{variant} compiled", settings, args.classes, str(device), compile=True)
            compile_s = time.perf_counter() - began
            measurements.append(compiled)
            rows_spec.append((variant, settings, flops, compiled, None, f"train: compile (first step {compile_s:.0f} s)"))
            began = time.perf_counter()
            lever = evaluation_workload(f"{variant} eval compiled", step.raw_backbone, settings["input_size"],
                                        eval_batch, compiled=True)
            measurements.append(lever)
            rows_spec.append((variant, settings, flops, None, lever,
                              f"eval: compile (first call {time.perf_counter() - began:.0f} s)"))
        print(f"set up {variant} ({time.perf_counter() - started:.0f} s)", flush=True)

    for round_ in range(args.repeats):
        for m in measurements:
            m.window(args.seconds)
        print(f"round {round_ + 1}/{args.repeats}: matmul {peak.windows[-1] / 1e9:.1f} GFLOP/s", flush=True)

    rows = []
    for variant, settings, flops, train, evaluation, setting in rows_spec:
        if train is None:  # an evaluation lever
            row = {"variant": variant, "setting": setting, "backbone": settings["backbone"],
                   "eval_img_s": evaluation.wall_rate, "eval_img_cpu_s": evaluation.cpu_rate,
                   "eval_windows_img_s": [round(r, 1) for r in evaluation.windows]}
        else:
            row = _row(variant, settings, flops, train, evaluation, peak, setting)
        rows.append(row)
    defaults = {r["variant"]: r for r in rows if r["setting"] == "default"}
    plain = defaults.get("plain")
    for row in rows:
        if row["setting"] == "default" and plain is not None and row["variant"] in ("plain", "se", "cbam"):
            row["train_overhead_vs_plain"] = plain["train_img_s"] / row["train_img_s"] - 1
            row["train_overhead_vs_plain_cpu_time"] = plain["train_img_cpu_s"] / row["train_img_cpu_s"] - 1
            row["eval_overhead_vs_plain"] = plain["eval_img_s"] / row["eval_img_s"] - 1
            row["eval_overhead_vs_plain_cpu_time"] = plain["eval_img_cpu_s"] / row["eval_img_cpu_s"] - 1
    extra = []
    if args.loop:
        extra.append(loop_measurement(variant_settings(config, "plain"), str(device), defaults.get("plain")))
    if args.evaluation:
        extra.append(evaluation_measurement(variant_settings(config, "plain"), config, Path(args.evaluation)))
    result = {"device": outputs.device_description(), "machine": platform.machine(), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "profile": config["profile"],
              "matmul_dtype": str(dtype).replace("torch.", ""), "matmul_gflop_s": peak.wall_rate / 1e9,
              "matmul_gflop_cpu_s": peak.cpu_rate / 1e9,
              "matmul_windows_gflop_s": [round(r / 1e9, 1) for r in peak.windows],
              "seconds_per_window": args.seconds, "repeats": args.repeats, "num_classes": args.classes,
              "eval_crops_per_call": eval_batch,
              "rows": rows, "study_loops": extra}
    out = Path(args.out)
    storage.write_json(out / "bench.json", result)
    storage.write_text(out / "bench.md", _markdown(result))
    print(_markdown(result))
    print(f"wrote {out}/bench.json and {out}/bench.md")
    return 0


def _markdown(result: dict) -> str:
    import pandas as pd

    rows = result["rows"]
    main_rows = [r for r in rows if r["setting"] == "default"]
    columns = ["variant", "backbone", "width", "input_size", "batch", "gflops_per_image", "train_img_s",
               "train_img_cpu_s", "train_gflop_s", "share_of_matmul", "share_of_matmul_cpu_time",
               "train_overhead_vs_plain", "train_overhead_vs_plain_cpu_time", "eval_img_s", "eval_img_cpu_s",
               "eval_overhead_vs_plain", "eval_overhead_vs_plain_cpu_time"]
    table = pd.DataFrame(main_rows).reindex(columns=columns)
    text = (f"Device: {result['device']}; torch {result['torch']}; {result['threads']} threads; profile "
            f"{result['profile']}. {result['matmul_dtype']} matmul: {result['matmul_gflop_s']:.1f} GFLOP/s by wall "
            f"clock, {result['matmul_gflop_cpu_s']:.1f} per process CPU second.\n\n"
            f"Best of {result['repeats']} interleaved windows of {result['seconds_per_window']} s each. "
            "Training: the loop's step (augmentation included), 3x forward FLOPs per image; share = achieved "
            "FLOP rate / matmul rate (by wall clock, and by process CPU time). Overheads: plain's rate / the "
            "variant's - 1. Evaluation: crops/s of embed_crops (flip fusion: two forward passes per crop). "
            "Timings on a shared machine are noisy: compare rows of one run, not runs.\n\n")
    text += outputs.to_markdown(table)
    levers = [r for r in rows if r["setting"] != "default"]
    if levers:
        lever_table = pd.DataFrame(levers).reindex(columns=["variant", "setting", "train_img_s", "train_img_cpu_s",
                                                            "share_of_matmul", "eval_img_s", "eval_img_cpu_s"])
        text += "\n\nSpeed-ups undone one at a time (same run):\n\n" + outputs.to_markdown(lever_table)
    if result.get("study_loops"):
        text += ("\n\nThe study's own loops (same run): the training loop as notebook 03 runs it (its rate over the "
                 "epochs' steps, and over the whole call with decoding, validation and checkpoints) against the bare "
                 "step's best window above; one model's evaluation on every test.\n\n"
                 + outputs.to_markdown(pd.DataFrame(result["study_loops"])))
    return text + "\n"


def _synthetic_training_set(root: Path, identities: int = 40, per_identity: int = 20) -> Path:
    """A training list of random 112 px crops and masked twins written as JPEG files (the loop reads files)."""
    import pandas as pd
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(identities):
        for j in range(per_identity):
            for suffix in ("", "_mask"):
                path = root / "synth" / "aligned" / f"id{i}" / f"img{j}{suffix}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (CROP, CROP, 3), dtype=np.uint8)).save(path, quality=95)
            rows.append({"dataset": "synth", "identity": f"id{i}", "image": f"img{j}.jpg",
                         "aligned": f"id{i}/img{j}.jpg", "masked": f"id{i}/img{j}_mask.jpg", "mask_style": "x"})
    csv = root / "train.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def loop_measurement(settings: dict, device: str, step_row: dict | None, epochs: int = 3) -> dict:
    """The study's training loop (:func:`maskstudy.train.train`) for ``settings`` on synthetic crops: images/s over
    the epochs' steps (as ``03_training``'s ``images_per_s``) and over the whole call, and the first against the
    bare step's rate of the same run."""
    import tempfile

    from maskstudy.train import train

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        csv = _synthetic_training_set(root)
        config = {**settings, "device": device, "epochs": epochs, "val_identities": 2, "max_steps": None}
        began = time.perf_counter()
        result = train(config, csv, root, root / "run", resume=False, progress=True, log=None)
        wall = time.perf_counter() - began
    history = result.history
    images = float((history["images_per_s"] * history["seconds"]).sum())
    loop_rate = images / float(history["seconds"].sum())
    step_rate = step_row["train_img_s"] if step_row else float("nan")
    return {"what": f"training loop, {settings['backbone']} ({epochs} epochs of {int(history['step'].iloc[0])} steps)",
            "img_s": loop_rate, "img_s_whole_call": images / wall, "bench_step_img_s": step_rate,
            "loop_vs_step": loop_rate / step_rate, "seconds": wall}


def evaluation_measurement(settings: dict, config: dict, data_dir: Path) -> dict:
    """Seconds of one model's evaluation on every test of the build in ``data_dir`` (notebook 03's call)."""
    from maskstudy.datasets.protocol import Split
    from maskstudy.models import build_backbone
    from maskstudy.study.experiment import Evaluation

    split = Split.load(data_dir / "split")
    evaluation = Evaluation.from_run(data_dir, split, config)
    evaluation.tests.embedding_dir = None  # every crop embedded, as for a newly trained model
    model = build_backbone(settings["backbone"], width=settings["width"], input_size=settings["input_size"],
                           embedding_size=settings["embedding_size"]).eval()
    began = time.perf_counter()
    results = evaluation.evaluate(model, settings["input_size"])
    seconds = time.perf_counter() - began
    crops = len(evaluation.tests.decoded_crops)  # the test crops, decoded once (the first model of a run does it)
    return {"what": f"evaluation of one model on every test ({len(results.verification)} LFW tests"
                    f"{', MFR2' if results.mfr2 else ''}, identification)", "img_s": float("nan"),
            "img_s_whole_call": float("nan"), "bench_step_img_s": float("nan"), "loop_vs_step": float("nan"),
            "seconds": seconds, "crops": crops}


if __name__ == "__main__":
    raise SystemExit(main())

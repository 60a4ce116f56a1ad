"""Benchmark: training and evaluation throughput of the IR-ResNet variants, against the machine's matmul rate.

Measures in one run, on this machine: the dense matmul rate (fp32 on CPU, bf16 on CUDA), and for each variant
(plain, SE, CBAM) training throughput (forward + backward + SGD step, images/s), achieved FLOP/s (3x the forward
FLOPs per image, the usual forward+backward estimate) as a share of the matmul rate, the cost of SE and CBAM
relative to plain, and evaluation throughput (forward only, images/s). Writes JSON and a markdown table.

    python bench/bench_backbones.py --width 0.25 --input-size 112 56 --out reports/cpu/bench
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from maskstudy import report, storage
from maskstudy.losses import build_margin_head
from maskstudy.models import build_backbone, count_flops


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, seconds: float) -> float:
    """Sustained FLOP/s of a square matmul (2 n^3 FLOPs each)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        a @ b
        count += 1
    _sync(device)
    return 2 * size**3 * count / (time.perf_counter() - began)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def throughput(step, batch: int, device: torch.device, seconds: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds or count < 3:
        step()
        count += 1
    _sync(device)
    return batch * count / (time.perf_counter() - began)


def bench_variant(name: str, width: float, input_size: int, batch: int, device: torch.device, seconds: float,
                  num_classes: int = 1000) -> dict:
    cuda = device.type == "cuda"
    model = build_backbone(name, width=width, input_size=input_size, embedding_size=512).to(device)
    head = build_margin_head("arcface", 512, num_classes).to(device)
    flops = count_flops(model, input_size)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    images = torch.randn(batch, 3, input_size, input_size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    optimizer = torch.optim.SGD(list(model.parameters()) + list(head.parameters()), lr=0.01, momentum=0.9)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def train_step():
        with autocast:
            loss, _ = head(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    train_rate = throughput(train_step, batch, device, seconds)
    model.eval()

    def eval_step():
        with torch.inference_mode(), autocast:
            model(images)

    eval_rate = throughput(eval_step, batch, device, seconds)
    return {"variant": name, "input_size": input_size, "width": width, "batch": batch,
            "params": sum(p.numel() for p in model.parameters()), "gflops_per_image": flops / 1e9,
            "train_img_s": train_rate, "eval_img_s": eval_rate, "train_gflop_s": 3 * flops * train_rate / 1e9}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depth", default="ir18")
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--input-size", type=int, nargs="+", default=[112, 56])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per variant and mode")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="reports/bench", help="folder for bench.json and bench.md")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_rate(device, dtype, 4096 if device.type == "cuda" else 1024, args.seconds)
    rows = []
    for input_size in args.input_size:
        for attention in ("", "_se", "_cbam"):
            row = bench_variant(args.depth + attention, args.width, input_size, args.batch, device, args.seconds)
            row["share_of_matmul_peak"] = row["train_gflop_s"] * 1e9 / peak
            rows.append(row)
            print(f"{row['variant']:>10} @{input_size}: train {row['train_img_s']:8.1f} img/s  "
                  f"eval {row['eval_img_s']:8.1f} img/s  {row['train_gflop_s']:7.1f} GFLOP/s "
                  f"({100 * row['share_of_matmul_peak']:.0f}% of matmul)", flush=True)
    for row in rows:
        plain = next(r for r in rows if r["input_size"] == row["input_size"] and r["variant"] == args.depth)
        row["train_cost_vs_plain"] = plain["train_img_s"] / row["train_img_s"]
        row["eval_cost_vs_plain"] = plain["eval_img_s"] / row["eval_img_s"]
    result = {"device": report.device_description(), "machine": platform.machine(),
              "threads": torch.get_num_threads(), "matmul_dtype": str(dtype).replace("torch.", ""),
              "matmul_gflop_s": peak / 1e9, "rows": rows}
    out = Path(args.out)
    storage.write_json(out / "bench.json", result)
    import pandas as pd

    table = pd.DataFrame(rows)[["variant", "input_size", "width", "batch", "params", "gflops_per_image",
                                "train_img_s", "train_cost_vs_plain", "train_gflop_s", "share_of_matmul_peak",
                                "eval_img_s", "eval_cost_vs_plain"]]
    header = (f"Device: {result['device']}; {result['threads']} threads; {result['matmul_dtype']} matmul "
              f"{result['matmul_gflop_s']:.0f} GFLOP/s.\n\n")
    storage.write_text(out / "bench.md", header + report.to_markdown(table))
    print(f"\nmatmul ({result['matmul_dtype']}): {result['matmul_gflop_s']:.1f} GFLOP/s; wrote {out}/bench.json and bench.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

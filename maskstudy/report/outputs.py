"""What a run writes: figures (PNG + SVG) in reading order, tables (CSV + markdown), the run's metadata (commit,
packages, device, data fingerprint) and its summary; :mod:`.index_page` renders them as ``index.html`` and
:mod:`.readme` as the README's results section."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import storage

#: Packages whose versions every run records.
RECORDED_PACKAGES = ("maskstudy", "torch", "torchvision", "facenet-pytorch", "timm", "grad-cam", "numpy",
                     "pandas", "scikit-learn", "matplotlib", "papermill", "nbconvert", "pillow")


def save_figure(fig, folder: str | Path, name: str, dpi: int = 110, svg: bool = True) -> Path:
    """Save a matplotlib figure as ``<folder>/<name>.png`` (and ``.svg``), atomically."""
    folder = Path(folder)
    png = folder / f"{name}.png"
    with storage.atomic_path(png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    if svg:
        with storage.atomic_path(folder / f"{name}.svg") as tmp:
            fig.savefig(tmp, format="svg", bbox_inches="tight")
    return png


def figure_order_path(run_dir: str | Path, notebook: str) -> Path:
    """``<run_dir>/outputs/figure_order/<notebook>.json``: the figures a notebook saved, in the order it saved them."""
    return Path(run_dir) / "outputs" / "figure_order" / f"{notebook}.json"


def figure_title(fig) -> str:
    """The figure's suptitle, else the title of its only titled axes; "" when it has none (the caption then is
    the file name alone)."""
    if hasattr(fig, "get_suptitle"):  # matplotlib >= 3.8
        suptitle = fig.get_suptitle().strip()
    else:
        suptitle = fig._suptitle.get_text().strip() if getattr(fig, "_suptitle", None) is not None else ""
    if suptitle:
        return suptitle
    titles = [ax.get_title().strip() for ax in fig.get_axes() if ax.get_title().strip()]
    return titles[0] if len(titles) == 1 else ""


def record_figure(order_file: str | Path, name: str, title: str = "") -> Path:
    """Append ``name`` (with its ``title``) to a notebook's figure order file, atomically; a figure saved again
    keeps its first place and takes the new title."""
    order_file = Path(order_file)
    entries = _read_figure_order(order_file)
    for entry in entries:
        if entry["name"] == name:
            entry["title"] = title
            break
    else:
        entries.append({"name": name, "title": title})
    return storage.write_json(order_file, entries)


def _read_figure_order(order_file: Path) -> list[dict[str, str]]:
    try:
        entries = json.loads(order_file.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [{"name": str(e["name"]), "title": str(e.get("title") or "")} for e in entries
            if isinstance(e, dict) and e.get("name")]


def to_markdown(frame: pd.DataFrame, float_format: str = "{:.4g}") -> str:
    """A GitHub-flavoured markdown table (no extra dependency)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else float_format.format(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(frame: pd.DataFrame, folder: str | Path, name: str) -> Path:
    """Save ``frame`` as ``<folder>/<name>.csv`` and ``<folder>/<name>.md``; returns the CSV path."""
    folder = Path(folder)
    storage.write_csv(folder / f"{name}.csv", frame)
    storage.write_text(folder / f"{name}.md", to_markdown(frame))
    return folder / f"{name}.csv"


#: Which notebook writes each result table; notebook 06 reads them and never recomputes or retypes a number.
PRODUCERS = {"01": "01_data_build", "02": "02_mtcnn_cleaning", "03": "03_se_cbam_training", "04": "04_vit_trial",
             "05": "05_gradcam_analysis"}


#: Published results, typed from the papers (the only hand-typed numbers, shown apart and labelled as such).
PUBLISHED_ANCHORS = [
    {"method": "ArcFace, ResNet-100", "training data": "MS1MV2 (5.8M images, 85k identities)", "benchmark": "LFW",
     "accuracy %": 99.83, "source": "Deng et al., ArcFace, CVPR 2019, Table 8"},
    {"method": "CosFace, ResNet-64", "training data": "CASIA-WebFace + private (5M images)", "benchmark": "LFW",
     "accuracy %": 99.73, "source": "Wang et al., CosFace, CVPR 2018, Table 4"},
    {"method": "SphereFace, 64-layer CNN", "training data": "CASIA-WebFace (0.49M images)", "benchmark": "LFW",
     "accuracy %": 99.42, "source": "Liu et al., SphereFace, CVPR 2017, Table 3"},
    {"method": "dlib ResNet-29 face recognition model", "training data": "about 3M images", "benchmark": "LFW",
     "accuracy %": 99.38, "source": "dlib documentation (dlib_face_recognition_resnet_model_v1)"},
]


class MissingResultError(FileNotFoundError):
    """An upstream result table is missing; the message names the file and the notebook that writes it."""


def read_results(tables: str | Path, names: list[str], optional: tuple[str, ...] = ()) -> dict[str, pd.DataFrame]:
    """Read result tables ``<tables>/<name>.csv``. Missing required tables raise :class:`MissingResultError`
    naming every missing file and the notebook to run; missing optional ones are left out of the result, and so are
    optional tables saved empty (a run that measured nothing there, e.g. without MFR2 or a teacher); an empty
    required table reads as an empty frame."""
    tables = Path(tables)
    found, missing = {}, []
    for name in list(names) + list(optional):
        path = tables / f"{name}.csv"
        if path.is_file():
            try:
                found[name] = pd.read_csv(path)
            except pd.errors.EmptyDataError:
                if name not in optional:
                    found[name] = pd.DataFrame()
        elif name not in optional:
            missing.append(f"{path} (written by notebook {PRODUCERS.get(name[:2], name[:2])})")
    if missing:
        raise MissingResultError("upstream results are missing; run the notebooks that write them first:\n  "
                                 + "\n  ".join(missing))
    return found


def git_commit(root: str | Path) -> str:
    """``<sha>`` of HEAD, with ``-dirty`` when tracked files differ from it; ``unknown`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``, e.g. ``AMD EPYC 9554``) followed by the architecture in
    brackets; the architecture alone where no model name is found. Two CPUs whose matmul rates differed 1.26x ran
    the cpu study 1.95x apart (92 and 47 min), so a timing names the CPU beside the rate."""
    machine = platform.processor() or platform.machine()
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return f"{' '.join(value.split())} ({machine})"
    except OSError:
        pass
    return machine


def device_description() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"CUDA: {torch.cuda.get_device_name(0)}"
        return f"CPU: {cpu_model()}, {torch.get_num_threads()} torch threads"
    except ImportError:  # pragma: no cover
        return platform.machine()


def data_fingerprint(data_dir: str | Path) -> dict[str, Any]:
    """File count and SHA-256 of each dataset manifest under ``data_dir``: what the run's data was."""
    data_dir = Path(data_dir)
    result: dict[str, Any] = {}
    for manifest in sorted(data_dir.glob("*/manifest.csv")):
        frame = pd.read_csv(manifest, usecols=["status"])
        result[manifest.parent.name] = {
            "images": int(len(frame)),
            "ok": int((frame["status"] == "ok").sum()),
            "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        }
    return result


def format_duration(seconds: Any) -> str:
    """``12.3 s``, ``4 min 05 s``, ``1 h 32 min``; "" when unknown."""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def figures_in_reading_order(run_dir: str | Path, notebooks: list[str] | None = None) -> list[dict[str, Any]]:
    """The run's figures (``figures/*.png``) grouped by notebook in notebook order, each group in the order the
    notebook saved them (its :func:`figure_order_path` file; figures it does not list follow by modification time,
    then name). Groups: ``{"notebook", "figures": [{"name", "title", "path"}]}``; a figure whose ``NN_`` prefix
    matches no notebook goes into a last group with notebook "other"."""
    run_dir = Path(run_dir)
    pngs = {p.stem: p for p in (run_dir / "figures").glob("*.png")}
    names = list(notebooks or [])
    order_dir = run_dir / "outputs" / "figure_order"
    names += [p.stem for p in order_dir.glob("*.json") if p.stem not in names]
    names = sorted(set(names))
    by_prefix = {n[:2]: n for n in names}
    groups: dict[str, list[dict[str, Any]]] = {}
    placed: set[str] = set()
    for notebook in names:
        for entry in _read_figure_order(figure_order_path(run_dir, notebook)):
            if entry["name"] in pngs and entry["name"] not in placed:
                groups.setdefault(notebook, []).append({**entry, "path": pngs[entry["name"]]})
                placed.add(entry["name"])
    rest = sorted((p for stem, p in pngs.items() if stem not in placed), key=lambda p: (p.stat().st_mtime_ns, p.name))
    for png in rest:
        notebook = by_prefix.get(png.stem[:2], "other")
        groups.setdefault(notebook, []).append({"name": png.stem, "title": "", "path": png})
    ordered = [n for n in names if n in groups] + (["other"] if "other" in groups and "other" not in names else [])
    return [{"notebook": n, "figures": groups[n]} for n in ordered]


def write_summary(run_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Record the study summary ``index.html`` and the README show first (:func:`maskstudy.study.answer.summarise`:
    question, verdicts, short warnings, key table and forest plot names, the findings grouped by question and
    every warning) as ``<run_dir>/summary.json``."""
    return storage.write_json(Path(run_dir) / "summary.json", dict(summary))


def read_summary(run_dir: str | Path) -> dict[str, Any]:
    """``<run_dir>/summary.json`` ({} when absent or unreadable); findings saved as a list of sentences (runs
    before the answer-first summary) read as one group."""
    try:
        summary = json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}
    findings = summary.get("findings") or []
    if findings and isinstance(findings[0], str):
        summary["findings"] = [{"question": "findings", "heading": "Findings", "sentences": findings}]
    return summary


def read_key_table(run_dir: str | Path, name: str) -> pd.DataFrame | None:
    """A saved table as text cells (blank stays blank), or ``None`` when it is not there."""
    path = Path(run_dir) / "tables" / f"{name}.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype=str, keep_default_na=False)

"""Report outputs: figures (PNG + SVG), tables (CSV + markdown), run metadata and the run's index.html."""

from __future__ import annotations

import hashlib
import html
import json
import platform
import shutil
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


def device_description() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return f"CUDA: {torch.cuda.get_device_name(0)}"
        return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
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


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.failed{color:#b00020;font-weight:bold}.ok{color:#1b7f3b}
.warning{color:#8a4b00}td.num{text-align:right;white-space:nowrap}
code{background:#f5f5f5;padding:0 .2em}
.figs{display:flex;flex-direction:column;align-items:flex-start;gap:1.2em;margin:.5em 0 1.5em}
.figs figure{margin:0;max-width:100%}
.figs img{max-width:100%;height:auto;display:block;border:1px solid #ddd}
.figs figcaption{font-size:.9em;color:#444;margin-top:.3em}
details{margin:.5em 0}
.question{font-size:1.1em}.verdicts li{margin:.3em 0}
.answer{margin:.8em 0}.answer img{max-width:100%;height:auto;display:block;border:1px solid #ddd}
.answer figcaption,.caption{font-size:.9em;color:#444;margin:.3em 0}
table.key td{white-space:nowrap}table.key td.model{white-space:normal}
.wide{overflow-x:auto;max-width:100%}table.kv td{overflow-wrap:anywhere}
summary{cursor:pointer;font-weight:bold}
"""


def _kv_table(mapping: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(json.dumps(v, default=str) if not isinstance(v, str) else v)}</code></td></tr>"
                   for k, v in mapping.items())
    return f"<table class='kv'>{rows}</table>"


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


def _figure_html(name: str, title: str = "") -> str:
    """One figure at its saved size (at most the page width), linked to its PNG, captioned with its title when
    known and its file name."""
    src = f"figures/{html.escape(name)}.png"
    caption = (f"{html.escape(title)} · " if title else "") + f"<code>{html.escape(name)}.png</code>"
    return (f"<figure><a href='{src}'><img src='{src}' alt='{html.escape(title or name)}' loading='lazy'></a>"
            f"<figcaption>{caption}</figcaption></figure>")


def _notebook_links(entry: Mapping[str, Any]) -> str:
    name = html.escape(entry["name"])
    if not entry.get("html"):
        return name
    link = f"<a href='{html.escape(entry['html'])}'>{name}</a>"
    if entry.get("results_html"):
        link += f" · <a href='{html.escape(entry['results_html'])}'>results only</a>"
    return link


def _machine_line(run: Mapping[str, Any]) -> str:
    threads = run.get("cpu_threads") or {}
    parts = [f"Machine: {html.escape(str(run.get('device', '?')))}"]
    if run.get("matmul_gflops") is not None:
        rate = f"fp32 matmul <b>{run['matmul_gflops']} GFLOP/s</b>"
        if threads.get("single_thread_gflops") is not None:
            rate += (f" with {threads.get('torch_threads')} thread(s) on {threads.get('cores')} core(s) "
                     f"({threads['single_thread_gflops']} with one thread")
            rate += (f", parallel efficiency {threads['parallel_efficiency']})" if threads.get("parallel_efficiency")
                     is not None else ")")
        parts.append(rate + ", measured at the start of the run")
    total = sum(float(n.get("seconds") or 0) for n in run.get("notebooks", []))
    if total:
        parts.append(f"wall time of the notebooks: <b>{format_duration(total)}</b>")
    return "<p>" + "; ".join(parts) + ".</p>"


def render_index(run: Mapping[str, Any], run_dir: str | Path) -> str:
    """The run folder's ``index.html``, answer first: the question, one verdict per question, the forest plot of
    model differences, the compact key table and the warnings that limit the answer (:func:`_answer_section`);
    then, collapsed, the complete findings grouped by question; then every notebook's HTML (with and without code)
    with its status, wall time and the matmul rate of its run, the figures in reading order (one column, notebook by
    notebook, in the order each saved them, with captions), the tables and the run metadata."""
    run_dir = Path(run_dir)
    title = f"maskstudy — {run.get('profile', '?')} run"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    failed = [n for n in run.get("notebooks", []) if n.get("status") == "failed"]
    if failed:
        first = failed[0]
        parts.append(f"<p class='failed'>Run failed in {html.escape(first['name'])}, cell {first.get('failed_cell')}: "
                     f"{html.escape(str(first.get('error', '')))}</p>")
    summary = read_summary(run_dir)
    parts += _answer_section(summary, run_dir)
    parts += _findings_section(summary, run_dir)
    parts.append("<h2 id='notebooks'>Notebooks</h2>")
    if run.get("warnings"):
        parts.append("<ul>" + "".join(f"<li class='warning'>Run warning: {html.escape(str(w))}</li>"
                                      for w in run["warnings"]) + "</ul>")
    parts.append(_machine_line(run))
    parts.append("<table><tr><th>notebook</th><th>status</th><th>wall time</th>"
                 "<th>matmul GFLOP/s</th><th>started</th><th>ended</th><th>commit</th></tr>")
    for entry in run.get("notebooks", []):
        status = entry.get("status", "")
        parts.append(f"<tr><td>{_notebook_links(entry)}</td><td class='{'failed' if status == 'failed' else 'ok'}'>"
                     f"{html.escape(status)}</td><td class='num'>{format_duration(entry.get('seconds'))}</td>"
                     f"<td class='num'>{html.escape(str(entry.get('matmul_gflops', '')))}</td>"
                     f"<td>{html.escape(str(entry.get('started', '')))}</td><td>{html.escape(str(entry.get('ended', '')))}</td>"
                     f"<td><code>{html.escape(str(entry.get('git_commit', ''))[:12])}</code></td></tr>")
    parts.append("</table>")
    links = {e["name"]: e for e in run.get("notebooks", [])}
    groups = figures_in_reading_order(run_dir, [e["name"] for e in run.get("notebooks", [])])
    if groups:
        parts.append("<h2 id='figures'>Figures</h2>")
        for group in groups:
            entry = links.get(group["notebook"])
            heading = _notebook_links(entry) if entry else html.escape(group["notebook"])
            parts.append(f"<h3>{heading}</h3><div class='figs'>")
            parts += [_figure_html(f["name"], f["title"]) for f in group["figures"]]
            parts.append("</div>")
    tables = sorted((run_dir / "tables").glob("*.md"))
    if tables:
        parts.append("<h2 id='tables'>Tables</h2><ul>")
        parts += [f"<li><a href='tables/{t.stem}.csv'>{t.stem}.csv</a> · <a href='tables/{t.name}'>markdown</a></li>" for t in tables]
        parts.append("</ul>")
    parts.append("<h2>Run metadata</h2>")
    meta = {k: run.get(k) for k in ("profile", "git_commit", "device", "matmul_gflops", "started", "ended", "command")
            if k in run}
    parts.append(_kv_table(meta))
    if run.get("cpu_threads"):
        parts.append("<details><summary>CPU threads</summary>" + _kv_table(run["cpu_threads"]) + "</details>")
    parts.append("<details><summary>Parameters</summary>" + _kv_table(run.get("parameters", {})) + "</details>")
    parts.append("<details open><summary>Data fingerprint</summary>" + _kv_table(run.get("data_fingerprint", {})) + "</details>")
    parts.append("<details><summary>Package versions</summary>" + _kv_table(run.get("packages", {})) + "</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _markdown_table_to_html(markdown: str) -> str:
    lines = [line.strip() for line in markdown.strip().splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        return ""
    cells = [[html.escape(c.strip()) for c in line.strip("|").split(" | ")] for line in lines]
    head = "".join(f"<th>{c}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[2:])
    return f"<table><tr>{head}</tr>{body}</table>"


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


def _key_table_html(table: pd.DataFrame) -> str:
    """The compact key table; a track's label spans its rows."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    rows, tracks = [], table["track"].tolist() if "track" in table else []
    for i, row in enumerate(table.itertuples(index=False)):
        cells = []
        for column, value in zip(table.columns, row):
            if column == "track":
                if i and tracks[i - 1] == value:
                    continue
                span = next((j for j in range(i, len(tracks)) if tracks[j] != value), len(tracks)) - i
                cells.append(f"<th rowspan='{span}'>{html.escape(value)}</th>")
            else:
                kind = "model" if column == "model" else "num"
                cells.append(f"<td class='{kind}'>{html.escape(value)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='key'><tr>{head}</tr>{''.join(rows)}</table>"


def _answer_section(summary: Mapping[str, Any], run_dir: Path) -> list[str]:
    """The first screen: the question, one verdict per question, the forest plot, the key table and the warnings
    that limit the answer; then where the rest is."""
    if not summary:
        return []
    parts = []
    if summary.get("question"):
        parts.append(f"<p class='question'><b>Question:</b> {html.escape(summary['question'])}</p>")
    if summary.get("verdicts"):
        parts.append("<h2>Answer</h2><ul class='verdicts'>" + "".join(
            f"<li><b>{html.escape(v['heading'])}:</b> {html.escape(v['text'])}</li>" for v in summary["verdicts"])
                     + "</ul>")
    forest = summary.get("forest_figure")
    if forest and (run_dir / "figures" / f"{forest}.png").is_file():
        src = f"figures/{html.escape(forest)}.png"
        parts.append(f"<figure class='answer'><a href='{src}'><img src='{src}' alt='forest plot of the differences "
                     "between models'></a><figcaption>Differences between models, in points of accuracy, grouped by "
                     "test (masked tests first), one panel per track; filled: separated from 0 after Holm's "
                     f"correction <code>{html.escape(forest)}.png</code></figcaption></figure>")
    key = read_key_table(run_dir, summary["key_table"]) if summary.get("key_table") else None
    if key is not None and len(key):
        parts.append("<h2>Key results</h2><p class='caption'>Verification accuracy %, mean ± sd over training seeds "
                     "(one run: the mean alone) · <a href='tables/" + html.escape(summary["key_table"])
                     + ".csv'>csv</a></p>" + _key_table_html(key))
    if summary.get("short_warnings"):
        parts.append("<h3>What limits the answer</h3><ul>" + "".join(
            f"<li class='warning'>{html.escape(w)}</li>" for w in summary["short_warnings"]) + "</ul>")
    parts.append("<p class='caption'>Below: <a href='#findings'>every finding</a> · <a href='#notebooks'>notebooks"
                 "</a> · <a href='#figures'>figures</a> · <a href='#tables'>tables</a></p>")
    return parts


def _findings_section(summary: Mapping[str, Any], run_dir: Path) -> list[str]:
    """The complete findings grouped by question, every warning and the full key tables, collapsed."""
    findings = summary.get("findings") or []
    if not findings:
        return []
    count = sum(len(group["sentences"]) for group in findings)
    parts = [f"<details id='findings'><summary>Every finding ({count}), grouped by question, every warning and the "
             "full key table</summary>"]
    for group in findings:
        parts.append(f"<h3>{html.escape(group['heading'])}</h3><ul>"
                     + "".join(f"<li>{html.escape(f)}</li>" for f in group["sentences"]) + "</ul>")
    if summary.get("warnings"):
        parts.append("<h3>Warnings</h3><ul>" + "".join(f"<li class='warning'>{html.escape(w)}</li>"
                                                       for w in summary["warnings"]) + "</ul>")
    for name in summary.get("key_tables", []):
        table = run_dir / "tables" / f"{name}.md"
        if table.is_file():
            parts.append(f"<h3>{html.escape(name)}</h3><div class='wide'>"
                         + _markdown_table_to_html(table.read_text()) + "</div>")
    parts.append("</details>")
    return parts


def write_index(run: Mapping[str, Any], run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    storage.write_json(run_dir / "run.json", dict(run))
    return storage.write_text(run_dir / "index.html", render_index(run, run_dir))


README_START = "<!-- results:start (written by `python -m maskstudy readme`; do not edit by hand) -->"
README_END = "<!-- results:end -->"
#: The README's results section stays within this many lines; the rest goes to ``docs/``.
README_LINE_BUDGET = 40
#: What ``python -m maskstudy readme`` writes into the committed ``docs/`` folder beside the README.
DOCS_FOREST = "results_differences.png"
DOCS_RESULTS = "results.md"


def _run_heading(run: Mapping[str, Any]) -> str:
    commits = sorted({str(n.get("git_commit", ""))[:10] for n in run.get("notebooks", [])})
    return (f"Results of the `{run.get('profile')}` profile (run of {str(run.get('started', ''))[:10]}, "
            f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits)})")


def _wall_time_line(run: Mapping[str, Any]) -> str:
    notebooks = run.get("notebooks", [])
    total = sum(float(n.get("seconds") or 0) for n in notebooks)
    times = ", ".join(f"{n['name'][:2]} {float(n.get('seconds') or 0) / 60:.1f} min" for n in notebooks)
    return (f"Wall time **{total / 60:.0f} min** ({times}) on {run.get('device', '?')}, whose dense fp32 matmul ran "
            f"at {run.get('matmul_gflops', '?')} GFLOP/s at the start of the run.")


def _key_table_markdown(table: pd.DataFrame) -> str:
    """The key table in markdown, each track named on its first row only."""
    shown = table.copy()
    if "track" in shown:
        shown["track"] = shown["track"].where(shown["track"] != shown["track"].shift(), "")
    return to_markdown(shown).strip()


def readme_results(run_dir: str | Path, docs: str = "docs") -> str:
    """The README's results section, from a finished run folder, answer first and within
    :data:`README_LINE_BUDGET` lines: the question, the verdicts, the forest plot (``<docs>/`` :data:`DOCS_FOREST`),
    the compact key table, the warnings that limit the answer, the wall time with the matmul rate, and links to the
    complete findings and the benchmarks (``<docs>/`` :data:`DOCS_RESULTS`, :func:`full_results`)."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    summary = read_summary(run_dir)
    lines = [f"### {_run_heading(run)}", ""]
    if summary.get("question"):
        lines += [f"**Question:** {summary['question']}", ""]
    lines += [f"- **{v['heading']}:** {v['text']}" for v in summary.get("verdicts", [])]
    if summary.get("forest_figure") and (run_dir / "figures" / f"{summary['forest_figure']}.png").is_file():
        lines += ["", f"![Differences between models, by test and track]({docs}/{DOCS_FOREST})"]
    key = read_key_table(run_dir, summary["key_table"]) if summary.get("key_table") else None
    if key is not None and len(key):
        lines += ["", "Verification accuracy %, mean ± sd over training seeds:", "", _key_table_markdown(key)]
    if summary.get("short_warnings"):
        lines += ["", "**What limits the answer:** " + " ".join(summary["short_warnings"])]
    benches = sorted((run_dir / "bench").glob("*.md"))
    lines += ["", _wall_time_line(run), "",
              "Every finding grouped by question, every warning, the full key table"
              + (" and the benchmarks (`bench/`)" if benches else "")
              + f": [{docs}/{DOCS_RESULTS}]({docs}/{DOCS_RESULTS}); the run's own report is `{_shown_path(run_dir)}/index.html`."]
    return "\n".join(lines)


def _shown_path(run_dir: Path) -> str:
    """``reports/<profile>`` for a run folder inside a repository's ``reports/``, else the path as given."""
    parts = run_dir.parts
    return "/".join(parts[parts.index("reports"):]) if "reports" in parts else str(run_dir)


def full_results(run_dir: str | Path) -> str:
    """The complete results of a run in markdown (``docs/`` :data:`DOCS_RESULTS`): every finding grouped by
    question, every warning, the full key tables and the benchmark reports written into ``<run_dir>/bench/``
    (``bench/*.py --out <run_dir>/bench``)."""
    run_dir = Path(run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    summary = read_summary(run_dir)
    lines = [f"# {_run_heading(run)}: everything", "",
             "Written by `python -m maskstudy readme` from the run's `summary.json` and tables; nothing is typed by hand. "
             "The answer in short is in the README's *Results*.", "", _wall_time_line(run)]
    for group in summary.get("findings") or []:
        lines += ["", f"## {group['heading']}", ""] + [f"- {f}" for f in group["sentences"]]
    if summary.get("warnings"):
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary["warnings"]]
    for name in summary.get("key_tables", []):
        path = run_dir / "tables" / f"{name}.md"
        if path.is_file():
            lines += ["", f"## `{name}`", "", path.read_text().strip()]
    benches = sorted((run_dir / "bench").glob("*.md"))
    if benches:
        lines += ["", "## Benchmarks", "", "Each measured in one run on this machine; ratios against a reference "
                  "measured in the same run."]
        for path in benches:  # their headings sit under this document's (## Benchmarks)
            lines += [""] + [f"##{line}" if line.startswith("#") else line
                             for line in path.read_text().strip().splitlines()]
    return "\n".join(lines) + "\n"


def update_readme(readme: str | Path, run_dir: str | Path) -> Path:
    """Replace the README's results section (between :data:`README_START` and :data:`README_END`) with
    :func:`readme_results` of ``run_dir``, and refresh the ``docs/`` folder beside it: the forest plot
    (:data:`DOCS_FOREST`) and the complete results (:data:`DOCS_RESULTS`). The markers must be there."""
    readme, run_dir = Path(readme), Path(run_dir)
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results markers ({README_START} ... {README_END})")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    docs = readme.parent / "docs"
    forest = run_dir / "figures" / f"{read_summary(run_dir).get('forest_figure')}.png"
    if forest.is_file():
        with storage.atomic_path(docs / DOCS_FOREST) as tmp:
            shutil.copyfile(forest, tmp)
    storage.write_text(docs / DOCS_RESULTS, full_results(run_dir))
    return storage.write_text(readme, f"{head}{README_START}\n{readme_results(run_dir)}\n{README_END}{tail}")

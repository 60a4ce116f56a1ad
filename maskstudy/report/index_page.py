"""The run's ``index.html``: the answer first (verdicts, forest plot, key table, warnings), then the findings, the
notebooks with their times, the figures in reading order and the run's metadata."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import storage
from .outputs import figures_in_reading_order, format_duration, read_key_table, read_summary

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

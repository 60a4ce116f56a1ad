"""The README's results section and the ``docs/`` folder beside it, written from a finished run folder by
``python -m maskstudy readme --run reports/<profile>``: answer first, within a line budget, the rest in ``docs/``."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ..core import storage
from .outputs import read_key_table, read_summary, to_markdown

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

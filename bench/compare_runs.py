"""Compare the result tables of two run folders exactly, timing columns aside.

    python bench/compare_runs.py reports/smoke /tmp/before/reports/smoke

Every ``tables/*.csv`` of either folder is read as text (no float parsing, so equal means byte-equal values);
columns that measure time or speed (seconds, images per second, GFLOP/s) are dropped, and so are tables that hold
nothing else. Prints one line per table and exits 1 when any table differs or exists in one folder only: the check
that a refactoring changed no number of the study.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

#: Columns whose values are wall times or rates of this machine, not results.
TIMING = re.compile(r"seconds|_per_s$|per_second|gflops|minutes|^time$|_time$|wall")


def read_table(path: Path) -> pd.DataFrame | None:
    """The table's values as text without its timing columns; ``None`` for an empty table (a test the run skipped)."""
    if not path.read_text(encoding="utf-8").strip():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return frame[[c for c in frame.columns if not TIMING.search(c)]]


def compare(first: Path, second: Path) -> list[tuple[str, str]]:
    """``(table, verdict)`` for every table name in either run folder."""
    names = sorted({p.name for p in (first / "tables").glob("*.csv")} | {p.name for p in (second / "tables").glob("*.csv")})
    verdicts = []
    for name in names:
        a, b = first / "tables" / name, second / "tables" / name
        if not a.is_file() or not b.is_file():
            verdicts.append((name, f"only in {first if a.is_file() else second}"))
            continue
        ta, tb = read_table(a), read_table(b)
        if ta is None or tb is None:
            verdicts.append((name, "identical" if ta is None and tb is None else "DIFFERENT (empty in one run)"))
        elif ta.shape[1] == 0 and tb.shape[1] == 0:
            verdicts.append((name, "timing only (skipped)"))
        elif list(ta.columns) != list(tb.columns):
            verdicts.append((name, f"columns differ: {list(ta.columns)} vs {list(tb.columns)}"))
        elif not ta.equals(tb):
            diff = (ta != tb) if ta.shape == tb.shape else None
            where = "" if diff is None else f" ({int(diff.to_numpy().sum())} cells, columns {list(ta.columns[diff.any()])})"
            verdicts.append((name, f"DIFFERENT{where}"))
        else:
            verdicts.append((name, "identical"))
    return verdicts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    verdicts = compare(args.first, args.second)
    for name, verdict in verdicts:
        print(f"{name:45s} {verdict}")
    bad = [v for v in verdicts if v[1] not in ("identical", "timing only (skipped)")]
    same = sum(v == "identical" for _, v in verdicts)
    print(f"{same} identical, {len(bad)} different or missing, of {len(verdicts)} tables")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Progress bars in executed notebooks: keep each loop's final line, drop the stream of updates.

A tqdm bar redraws itself with carriage returns (``\\r``). A terminal or JupyterLab overwrites the line in place,
but under papermill every redraw is saved as its own stream output, and the exported HTML shows hundreds of lines
per loop in a red stderr block. :func:`tidy_executed_notebook` rewrites an executed notebook as a terminal would
have left it: consecutive stream outputs of a cell are merged (as JupyterLab merges them), each bar's redraws become
its last state (one line per loop), a bar that erases itself when done (``leave=False``) disappears as it does on
screen (its last drawn state is often stale, e.g. 0 % after a fast loop), and every line written without a carriage
return (warnings, prints, tracebacks) is kept as it was.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

from ..core import storage

#: The time field that ends tqdm's default bar (``[00:14<00:00, 4.48step/s, loss=1.2]`` or ``[00:01, 12.3it/s]``):
#: text glued after it in the same write (a warning printed mid-loop) is split onto its own line.
_BAR_END = re.compile(r"\[\d+:\d{2}(?::\d{2})?(?:[<,][^\]\r\n]*)?\]")


def _split_glued(segment: str) -> tuple[str, str]:
    """``(bar, rest)``: a redraw and any text written straight after it without a line break."""
    match = _BAR_END.search(segment)
    if match is None:
        return segment, ""
    return segment[:match.end()], segment[match.end():]


def _collapse_line(line: str) -> list[str]:
    """The visible lines left by one physical line holding carriage-return redraws: each bar's last state, except
    for a bar erased by spaces written over it (how tqdm closes a ``leave=False`` bar), which is dropped; text
    glued after a redraw (a warning printed mid-loop) gets its own line after the bar's state at that moment."""
    kept: list[str] = []
    current: str | None = None
    for segment in line.split("\r"):
        if not segment.strip():
            if segment:  # spaces: the bar was erased
                current = None
            continue
        bar, rest = _split_glued(segment)
        current = bar.rstrip()
        if rest.strip():
            kept += [current, rest]
            current = None
    if current is not None:
        kept.append(current)
    return kept


def collapse_progress(text: str) -> str:
    """``text`` as a terminal shows it once every bar has finished: each run of ``\\r`` redraws becomes its
    final state; lines without ``\\r`` are returned unchanged."""
    if "\r" not in text:
        return text
    lines: list[str] = []
    for line in text.split("\n"):
        if "\r" in line:
            lines += _collapse_line(line)
        else:
            lines.append(line)
    return "\n".join(lines)


def _merge_streams(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive stream outputs of one name merged into one (a line written after an unfinished redraw
    starts a new line, as it would once the bar had moved on)."""
    merged: list[dict[str, Any]] = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous.get("name") == output.get("name")):
            before, after = previous["text"], output["text"]
            last_line = before.rsplit("\n", 1)[-1]
            if "\r" in last_line and after and after[0] not in "\r\n":
                before += "\n"
            previous["text"] = before + after
        else:
            merged.append(copy.deepcopy(output) if output.get("output_type") == "stream" else output)
    return merged


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def collapse_notebook_progress(nb) -> int:
    """Collapse progress redraws in every code cell of ``nb`` (an nbformat notebook, changed in place);
    returns how many stream outputs were merged away or shortened (0: nothing changed)."""
    changed = 0
    for cell in nb.cells:
        outputs = cell.get("outputs") if cell.get("cell_type") == "code" else None
        if not outputs:
            continue
        for output in outputs:
            if output.get("output_type") == "stream":
                output["text"] = _text(output.get("text", ""))
        merged = _merge_streams(list(outputs))
        for output in merged:
            if output.get("output_type") == "stream":
                collapsed = collapse_progress(output["text"])
                changed += collapsed != output["text"]
                output["text"] = collapsed
        if any("\r" in o["text"] for o in outputs if o.get("output_type") == "stream"):
            # a bar's closing newline left alone between prints would show as an empty stderr block
            merged = [o for o in merged if o.get("output_type") != "stream" or o["text"].strip("\n")]
        changed += len(outputs) - len(merged)
        cell["outputs"] = merged
    return changed


def tidy_executed_notebook(path: str | Path) -> int:
    """Collapse the progress redraws of the executed notebook at ``path`` and rewrite it atomically
    (:func:`maskstudy.core.storage.write_text`); returns :func:`collapse_notebook_progress`'s count."""
    import nbformat

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = collapse_notebook_progress(nb)
    if changed:
        storage.write_text(path, nbformat.writes(nb))
    return changed

"""The study pipeline: run the numbered notebooks in order with papermill and export them to HTML.

The notebooks are stored as Jupytext ``py:percent`` text (``notebooks/NN_*.py``: one source, diffed and linted like
code). ``python -m maskstudy run --profile cpu`` converts each to ``.ipynb`` in ``reports/<profile>/``, executes it
there with papermill (working directory: the repository root), collapses the progress-bar redraws the kernel
streamed into one final line per loop (:mod:`maskstudy.report.progress`), exports it to self-contained HTML, with
and without the code, and writes ``index.html`` + ``run.json`` with the run's metadata. It stops at the first
failing notebook and says which cell failed.

The kernel gets as many OpenMP/MKL threads as this process may use cores (:mod:`maskstudy.core.cpu_threads`), and the
run starts by checking whether other busy processes share those cores (warnings in the log, ``run.json`` and
``index.html``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core import cpu_threads, storage
from ..core.allocator import keep_freed_memory
from ..core.profiles import resolve_config
from ..datasets.build import project_root
from . import index_page, outputs
from .progress import tidy_executed_notebook

KERNEL_NAME = "python3"

#: Progress-bar defaults for the notebook kernel (tqdm >= 4.66 reads ``TQDM_*`` variables; a variable the user set
#: wins): at most one redraw per second, which keeps a terminal bar live and the saved notebook small.
KERNEL_TQDM_ENVIRONMENT = {"TQDM_MININTERVAL": "1"}


class PipelineError(RuntimeError):
    """A notebook failed; the message names the notebook and the cell."""


class RunFolderLockedError(RuntimeError):
    """Another run holds the report folder; the message says which (process id, host, start time)."""


@contextlib.contextmanager
def run_folder_lock(run_dir: Path, wait: bool = False):
    """Hold ``<run_dir>/.lock`` (an OS file lock, released when the process ends) while a run writes
    ``run.json`` and ``index.html``; a second run on the folder fails at once naming the holder, or waits."""
    import fcntl
    import socket

    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise RunFolderLockedError(f"{run_dir} is in use by another run ({holder}); wait for it to end, "
                                       "or use another --run-dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {_now()}")
        handle.flush()
        yield
    finally:
        handle.close()  # closing releases the lock


def notebooks(root: str | Path | None = None) -> list[Path]:
    """The numbered study notebooks (Jupytext ``py:percent`` files), in order."""
    folder = Path(root or project_root()) / "notebooks"
    found = sorted(p for p in folder.glob("[0-9][0-9]_*.py"))
    if not found:
        raise FileNotFoundError(f"no numbered notebooks (NN_name.py, Jupytext py:percent) in {folder}")
    return found


def read_notebook(path: str | Path):
    """A text notebook as an nbformat notebook (no outputs), with the kernel papermill should start."""
    import jupytext

    nb = jupytext.read(path, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    for i, cell in enumerate(nb.cells):  # stable cell ids, so executed copies diff cleanly between runs
        cell["id"] = f"{Path(path).name[:2]}-{i:02d}"
    return nb


def write_input_notebook(path: Path, destination: Path) -> Path:
    """Convert the text notebook ``path`` to ``.ipynb`` at ``destination`` (atomically), for papermill."""
    import nbformat

    return storage.write_text(destination, nbformat.writes(read_notebook(path)))


def select_notebooks(paths: Sequence[Path], only: str | None = None, start: str | None = None) -> list[Path]:
    """Filter by ``only`` ("01,02") and ``start`` ("03": that one and the rest); unknown numbers are errors."""
    numbers = {p.name[:2]: p for p in paths}

    def check(number: str) -> str:
        number = number.strip().zfill(2)
        if number not in numbers:
            raise ValueError(f"no notebook numbered {number}; available: {', '.join(numbers)}")
        return number

    chosen = list(paths)
    if only:
        wanted = {check(n) for n in only.split(",") if n.strip()}
        chosen = [p for p in chosen if p.name[:2] in wanted]
    if start:
        first = check(start)
        chosen = [p for p in chosen if p.name[:2] >= first]
    return chosen


def parse_parameter(text: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``3``, ``0.5``, ``true``, ``null``, ``[1, 2]``, ``{a: b}``, ``text``)."""
    import yaml

    if "=" not in text:
        raise ValueError(f"parameter {text!r} is not of the form key=value")
    key, value = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as error:
        problem = str(getattr(error, "problem", None) or error).splitlines()[0]
        raise ValueError(f"parameter {key.strip()}: {value!r} is not a valid YAML value ({problem})") from None


def _now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _failure_details(error: Exception) -> tuple[int | None, str]:
    cell = getattr(error, "exec_count", None)
    ename, evalue = getattr(error, "ename", type(error).__name__), getattr(error, "evalue", str(error))
    return cell, f"{ename}: {evalue}"


def results_html_path(html_path: Path) -> Path:
    """Where the code-hidden variant of ``<stem>.html`` goes: ``<stem>.results.html``."""
    return html_path.with_name(f"{html_path.stem}.results.html")


def export_html(notebook_path: Path, html_path: Path, without_code: bool = True) -> list[Path]:
    """Self-contained HTML (images embedded) of an executed notebook, written atomically; with ``without_code``
    also :func:`results_html_path`, the same page without code cells' input (text, figures, tables and output only)
    for a reader who wants the results. Returns the paths written."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook_path, as_version=4)
    body, _ = HTMLExporter(embed_images=True).from_notebook_node(nb)
    written = [storage.write_text(html_path, body)]
    if without_code:
        body, _ = HTMLExporter(embed_images=True, exclude_input=True, exclude_input_prompt=True,
                               exclude_output_prompt=True).from_notebook_node(nb)
        written.append(storage.write_text(results_html_path(html_path), body))
    return written


@contextlib.contextmanager
def kernel_environment(cores: int):
    """Set, for the kernels started inside the block, the thread-pool variables for ``cores`` threads and the
    progress-bar defaults (:data:`KERNEL_TQDM_ENVIRONMENT`); variables the user set are kept. Restored after."""
    extra = cpu_threads.thread_environment(cores)
    extra.update({k: v for k, v in KERNEL_TQDM_ENVIRONMENT.items() if not os.environ.get(k)})
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield extra
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_pipeline(
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    only: str | None = None,
    start: str | None = None,
    run_dir: str | Path | None = None,
    kernel_name: str = KERNEL_NAME,
    progress: bool = True,
    log=print,
    thread_check=None,
) -> dict[str, Any]:
    """Execute the selected notebooks and export them; returns the run record (also saved as ``run.json``).

    The run holds a lock on ``run_dir`` (:func:`run_folder_lock`): a second run on the same folder stops at once
    with :class:`RunFolderLockedError` naming the holder, so that no run loses the other's entries.
    ``thread_check()`` returns the start's :class:`~maskstudy.core.cpu_threads.ThreadCheck` (default
    :func:`~maskstudy.core.cpu_threads.check_threads`; tests inject one)."""
    root = project_root()
    config = resolve_config(profile, overrides)
    profile = config["profile"]
    run_dir = Path(run_dir) if run_dir else root / "reports" / profile
    run_dir = run_dir if run_dir.is_absolute() else root / run_dir
    selected = select_notebooks(notebooks(root), only, start)
    with run_folder_lock(run_dir):
        check = (thread_check or cpu_threads.check_threads)()
        with kernel_environment(check.torch_threads):
            return _run_notebooks(selected, config, run_dir, root, kernel_name, progress, log, check)


def _run_notebooks(selected: list[Path], config: dict[str, Any], run_dir: Path, root: Path, kernel_name: str,
                   progress: bool, log, check: cpu_threads.ThreadCheck) -> dict[str, Any]:
    import papermill

    profile = config["profile"]
    previous = _previous_run(run_dir)
    record: dict[str, Any] = {
        "profile": profile, "parameters": config, "git_commit": outputs.git_commit(root),
        "device": outputs.device_description(), "packages": outputs.package_versions(), "started": _now(),
        "command": " ".join(sys.argv), "notebooks": previous.get("notebooks", []),
        "matmul_gflops": check.matmul_gflops, "cpu_threads": check.as_record(), "warnings": list(check.warnings),
    }
    executed = {p.stem for p in selected}
    record["notebooks"] = [n for n in record["notebooks"] if n["name"] not in executed]
    log(f"maskstudy: profile {profile}, {len(selected)} notebook(s) -> {run_dir}")
    log(f"maskstudy: {check.torch_threads} torch thread(s) on {check.cores} core(s), fp32 matmul "
        f"{check.matmul_gflops} GFLOP/s ({check.single_thread_gflops} with one thread)")
    for warning in check.warnings:
        log(f"maskstudy: warning: {warning}")
    for path in selected:
        out_nb, out_html = run_dir / f"{path.stem}.ipynb", run_dir / f"{path.stem}.html"
        # partial reruns can mix commits and machine states: each entry says which
        entry: dict[str, Any] = {"name": path.stem, "notebook": out_nb.name, "started": _now(), "status": "running",
                                 "git_commit": record["git_commit"], "matmul_gflops": check.matmul_gflops}
        record["notebooks"].append(entry)
        record["notebooks"].sort(key=lambda n: n["name"])
        index_page.write_index(record, run_dir)
        log(f"--> {path.stem}")
        began = time.perf_counter()
        try:
            write_input_notebook(path, out_nb)
            papermill.execute_notebook(
                str(out_nb), str(out_nb), parameters={"profile": profile, "run_dir": str(run_dir), "params": config},
                kernel_name=kernel_name, cwd=str(root), progress_bar=False, log_output=False,
                # the kernel's own progress bars (detection, training) stream to this terminal
                stderr_file=sys.stderr if progress else None,
            )
            entry["status"] = "ok"
        except Exception as error:  # papermill raises PapermillExecutionError for a failing cell
            cell, message = _failure_details(error)
            entry.update(status="failed", failed_cell=cell, error=message)
        entry["ended"] = _now()
        entry["seconds"] = round(time.perf_counter() - began, 1)
        if out_nb.exists():
            tidy_executed_notebook(out_nb)  # one final line per progress bar instead of every redraw
            _, results_html = export_html(out_nb, out_html)
            entry["html"], entry["results_html"] = out_html.name, results_html.name
        record["data_fingerprint"] = outputs.data_fingerprint(root / config["data_dir"])
        record["ended"] = _now()
        index_page.write_index(record, run_dir)
        if entry["status"] == "failed":
            raise PipelineError(f"{out_nb.name} failed in cell {entry.get('failed_cell')}: {entry['error']}\n"
                                f"See {out_html if out_html.exists() else out_nb} for the traceback.")
        log(f"    {path.stem} done in {entry['seconds']} s")
    log(f"report: {run_dir / 'index.html'}")
    return record


def _previous_run(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class Study:
    """What a notebook needs: the resolved parameters and the run folder's layout."""

    name: str
    config: dict[str, Any]
    run_dir: Path
    root: Path = field(default_factory=project_root)

    def __getitem__(self, key: str) -> Any:
        return self.config[key]

    @property
    def figures(self) -> Path:
        return self.run_dir / "figures"

    @property
    def tables(self) -> Path:
        return self.run_dir / "tables"

    @property
    def outputs(self) -> Path:
        """Machine outputs of the run (manifests, checkpoints): git-ignored like the whole reports/ tree."""
        return self.run_dir / "outputs"

    @property
    def data_dir(self) -> Path:
        return self.root / self.config["data_dir"]

    @property
    def figure_order_file(self) -> Path:
        """The notebook's figures in the order it saved them, with their titles: how ``index.html`` lays them out."""
        return outputs.figure_order_path(self.run_dir, self.name)

    def save_figure(self, fig, name: str, min_dpi: int = 0) -> Path:
        """Save ``fig`` at the profile's ``figure_dpi`` (at least ``min_dpi``) and record it in reading order."""
        png = outputs.save_figure(fig, self.figures, name, dpi=max(self.config.get("figure_dpi", 110), min_dpi))
        outputs.record_figure(self.figure_order_file, name, outputs.figure_title(fig))
        return png

    def save_table(self, frame, name: str) -> Path:
        return outputs.save_table(frame, self.tables, name)


def start_notebook(name: str, profile: str | None = None, run_dir: str | Path | None = None,
                   params: Mapping[str, Any] | None = None) -> Study:
    """First call of every notebook: same behaviour under papermill and in JupyterLab.

    Changes the working directory to the repository root, resolves the profile (``params`` from papermill
    already hold it; in JupyterLab they are empty and the profile's defaults apply), seeds the RNGs, creates the
    run folder and saves the parameters to ``<run_dir>/params/<name>.json``. Torch's intra-op threads are pinned to
    the cores this process may use (``OMP_NUM_THREADS`` when set; :func:`maskstudy.core.cpu_threads.pin_torch_threads`),
    and the C allocator keeps freed memory for reuse (:func:`maskstudy.core.allocator.keep_freed_memory`).
    """
    import warnings

    from ..core.seeding import seed_everything  # torch: imported in the notebook's kernel only

    # libraries import tqdm.auto, which warns in kernels without ipywidgets; our bars are plain text on purpose
    warnings.filterwarnings("ignore", message="IProgress not found")
    root = project_root()
    os.chdir(root)
    config = resolve_config(profile or (params or {}).get("profile"), params)
    run_dir = Path(run_dir) if run_dir else root / "reports" / config["profile"]
    for folder in ("figures", "tables", "outputs", "params"):
        (run_dir / folder).mkdir(parents=True, exist_ok=True)
    storage.write_json(run_dir / "params" / f"{name}.json", config)
    study = Study(name=name, config=config, run_dir=run_dir, root=root)
    storage.write_json(study.figure_order_file, [])  # a rerun lists its figures afresh
    cpu_threads.pin_torch_threads()
    keep_freed_memory()
    seed_everything(int(config["seed"]))
    return study

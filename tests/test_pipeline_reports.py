"""What a reviewer reads: executed notebooks without progress-bar streams, HTML with and without code, the run's
index (figures in reading order, wall times, matmul rate, warnings), and the runner's CPU-thread hygiene."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import nbformat
import pytest
from tqdm import tqdm

from maskstudy.core import cpu_threads
from maskstudy.report import index_page, outputs
from maskstudy.report.pipeline import Study, export_html, kernel_environment, results_html_path
from maskstudy.report.progress import collapse_notebook_progress, collapse_progress, tidy_executed_notebook

WARNING = "/data/x.py:3: UserWarning: a real warning the reader must see\n  warnings.warn(\n"


class _Chunks:
    """A stream that keeps every write apart, as papermill saves each kernel flush as its own stream output."""

    def __init__(self):
        self.chunks: list[str] = []

    def write(self, text: str) -> None:
        self.chunks.append(text)

    def flush(self) -> None:
        pass


def _captured_tqdm() -> list[dict]:
    """Stream outputs as a kernel records them: real tqdm redraws (kept and cleared bars, a bar with a postfix,
    a warning written mid-loop), a print between bars."""
    err = _Chunks()
    outputs: list[dict] = []
    for _ in tqdm(range(200), desc="MTCNN lfw", unit="img", file=err, mininterval=0):
        pass
    outputs += [nbformat.v4.new_output("stream", name="stderr", text=c) for c in err.chunks]
    outputs.append(nbformat.v4.new_output("stream", name="stdout", text="lfw: 200 images\n"))
    err.chunks.clear()
    for i in tqdm(range(120), desc="decode aligned", file=err, mininterval=0, leave=False):
        if i == 60:
            err.write(WARNING)
    for _ in tqdm(range(80), desc="decode masked", file=err, mininterval=0, leave=False):
        pass
    with tqdm(total=66, desc="epoch 1/6", unit="step", file=err, mininterval=0) as bar:
        for step in range(66):
            bar.update()
            bar.set_postfix(loss=20 - step / 10)
    outputs += [nbformat.v4.new_output("stream", name="stderr", text=c) for c in err.chunks]
    return outputs


def _notebook_with(outputs: list[dict]):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A study"),
                nbformat.v4.new_code_cell("loop_over_photos()", outputs=outputs, execution_count=1)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _stderr_lines(nb) -> list[str]:
    return [line for cell in nb.cells for o in cell.get("outputs", [])
            if o.get("output_type") == "stream" and o["name"] == "stderr" for line in o["text"].split("\n") if line]


def test_executed_notebook_keeps_one_line_per_progress_bar_and_every_warning(tmp_path):
    outputs = _captured_tqdm()
    assert sum(o["name"] == "stderr" for o in outputs) > 300  # the stream a notebook used to show
    path = tmp_path / "01_data_build.ipynb"
    nbformat.write(_notebook_with(outputs), path)

    assert tidy_executed_notebook(path) > 0
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    lines = _stderr_lines(nb)
    for desc, final in (("MTCNN lfw", "200/200"), ("epoch 1/6", "66/66")):
        assert [line for line in lines if line.startswith(desc)] == [next(line for line in lines if final in line)]
    # bars that erase themselves (leave=False) disappear as on screen; the warning keeps the state it interrupted
    assert [line for line in lines if line.startswith("decode")] == [
        next(line for line in lines if line.startswith("decode aligned:  50%|"))]
    assert "loss=13.5" in next(line for line in lines if line.startswith("epoch 1/6"))
    assert WARNING.split("\n")[:2] == [line for line in lines if "warn" in line.lower()]
    assert not any("\r" in line for line in lines)
    stdout = [o for o in nb.cells[1].outputs if o["name"] == "stdout"]
    assert [o["text"] for o in stdout] == ["lfw: 200 images\n"]
    # the order of what was written stays: bar, print, then the later bars
    kinds = [o["name"] for o in nb.cells[1].outputs]
    assert kinds == ["stderr", "stdout", "stderr"]
    assert tidy_executed_notebook(path) == 0  # idempotent: nothing left to collapse, file not rewritten


def test_collapse_progress_keeps_plain_text_and_each_cleared_bar():
    assert collapse_progress("no bars here\n\nat all\n") == "no bars here\n\nat all\n"
    text = ("\rA:  50%|#  | 1/2 [00:00<00:00]\rA: 100%|## | 2/2 [00:01<00:00]\n"
            "\rB:  50%|#  | 1/2 [00:00<00:00]\rB: 100%|## | 2/2 [00:01<00:00]\r" + " " * 30 + "\r"
            "\rC:  10%|   | 1/10 [00:00<?, ?it/s]\rC:  90%|#  | 9/10 [00:02<00:00, 4.0it/s]\r\n")
    assert collapse_progress(text) == "A: 100%|## | 2/2 [00:01<00:00]\nC:  90%|#  | 9/10 [00:02<00:00, 4.0it/s]\n"
    glued = "\rC:  50%|#  | 1/2 [00:00<00:00, 2.0it/s]" + WARNING + "\rC: 100%|## | 2/2 [00:01<00:00, 2.0it/s]\n"
    assert collapse_progress(glued) == ("C:  50%|#  | 1/2 [00:00<00:00, 2.0it/s]\n" + WARNING
                                        + "C: 100%|## | 2/2 [00:01<00:00, 2.0it/s]\n")


def test_collapse_leaves_cells_without_progress_alone():
    nb = _notebook_with([nbformat.v4.new_output("stream", name="stdout", text="a\n"),
                         nbformat.v4.new_output("stream", name="stdout", text="\n"),
                         nbformat.v4.new_output("stream", name="stderr", text=WARNING)])
    before = nbformat.writes(nb)
    collapse_notebook_progress(nb)
    assert [o["text"] for o in nb.cells[1].outputs] == ["a\n\n", WARNING]  # merged as JupyterLab shows them
    assert "a real warning" in before


def test_html_export_with_and_without_code(tmp_path):
    nb = _notebook_with([nbformat.v4.new_output("stream", name="stdout", text="accuracy 0.97 on the pairs\n")])
    nb.cells[1].source = "unique_code_marker_4711 = compute_accuracy()"
    path = tmp_path / "03_se_cbam_training.ipynb"
    nbformat.write(nb, path)
    full, results = export_html(path, tmp_path / "03_se_cbam_training.html")
    assert results == results_html_path(full) == tmp_path / "03_se_cbam_training.results.html"
    assert full.is_file() and results.is_file()
    full_html, results_html = full.read_text(), results.read_text()
    assert "unique_code_marker_4711" in full_html
    assert "unique_code_marker_4711" not in results_html
    # input areas: the markdown cell's and the code cell's with code; only the markdown cell's without
    assert full_html.count('class="jp-InputArea') == 2 and results_html.count('class="jp-InputArea') == 1
    for page in (full_html, results_html):
        assert "accuracy 0.97 on the pairs" in page and "A study" in page
    assert list(tmp_path.glob(".*.tmp")) == []  # written atomically


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n")


def test_index_lays_figures_out_in_reading_order_with_times_rate_and_warnings(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    study = Study(name="01_data_build", config={"figure_dpi": 20}, run_dir=tmp_path)
    for name, title in (("01_zeta_first", "Detection status"), ("01_alpha_second", ""), ("01_mid_third", "")):
        fig, ax = plt.subplots(figsize=(2, 1))
        if title:
            fig.suptitle(title)
        study.save_figure(fig, name)
        plt.close(fig)
    _png(tmp_path / "figures" / "02_b.png")
    _png(tmp_path / "figures" / "02_a.png")
    os.utime(tmp_path / "figures" / "02_a.png", (1e9, 1e9))  # saved later than 02_b: no order file, by time
    os.utime(tmp_path / "figures" / "02_b.png", (0.9e9, 0.9e9))
    outputs.record_figure(outputs.figure_order_path(tmp_path, "02_mtcnn_cleaning"), "02_gone")  # no PNG: skipped

    groups = outputs.figures_in_reading_order(tmp_path, ["01_data_build", "02_mtcnn_cleaning"])
    assert [(g["notebook"], [f["name"] for f in g["figures"]]) for g in groups] == [
        ("01_data_build", ["01_zeta_first", "01_alpha_second", "01_mid_third"]),
        ("02_mtcnn_cleaning", ["02_b", "02_a"])]
    assert groups[0]["figures"][0]["title"] == "Detection status"

    run = {"profile": "smoke", "device": "CPU: x86_64", "matmul_gflops": 24.0,
           "cpu_threads": {"cores": 2, "torch_threads": 2, "single_thread_gflops": 40.0, "parallel_efficiency": 0.3},
           "warnings": ["the CPU looks shared with other busy processes"],
           "notebooks": [{"name": "01_data_build", "status": "ok", "seconds": 1338.0, "matmul_gflops": 24.0,
                          "html": "01_data_build.html", "results_html": "01_data_build.results.html"},
                         {"name": "02_mtcnn_cleaning", "status": "ok", "seconds": 12.34, "matmul_gflops": 189.4,
                          "html": "02_mtcnn_cleaning.html", "results_html": "02_mtcnn_cleaning.results.html"}]}
    page = index_page.render_index(run, tmp_path)
    positions = [page.index(f"figures/{n}.png") for n in ("01_zeta_first", "01_alpha_second", "01_mid_third",
                                                           "02_b", "02_a")]
    assert positions == sorted(positions)
    assert "Detection status · <code>01_zeta_first.png</code>" in page
    assert "02_gone" not in page
    assert "22 min 18 s" in page and "12.3 s" in page and "22 min 30 s" in page  # per notebook and in total
    assert "24.0 GFLOP/s" in page and "189.4" in page and "40.0 with one thread" in page
    assert "Run warning: the CPU looks shared" in page
    assert "href='01_data_build.results.html'>results only</a>" in page


def test_record_figure_keeps_first_place_and_rerun_starts_afresh(tmp_path):
    order = outputs.figure_order_path(tmp_path, "05_gradcam_analysis")
    for name in ("05_b", "05_a", "05_b"):
        outputs.record_figure(order, name, f"title of {name}")
    assert [e["name"] for e in json.loads(order.read_text())] == ["05_b", "05_a"]
    order.write_text("not json")
    assert outputs._read_figure_order(order) == []


def test_cpu_model_names_the_processor_beside_the_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs.platform, "processor", lambda: "")
    monkeypatch.setattr(outputs.platform, "machine", lambda: "x86_64")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC  9554 64-Core Processor\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9554 64-Core Processor\n")
    assert outputs.cpu_model(cpuinfo) == "AMD EPYC 9554 64-Core Processor (x86_64)"
    cpuinfo.write_text("processor\t: 0\nmodel name\t:\n")  # no name (some virtual machines, other systems)
    assert outputs.cpu_model(cpuinfo) == "x86_64"
    assert outputs.cpu_model(tmp_path / "absent") == "x86_64"


@pytest.mark.parametrize("seconds,text", [(None, ""), ("x", ""), (5, "5.0 s"), (65.4, "1 min 05 s"),
                                          (3725, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert outputs.format_duration(seconds) == text


def test_available_cores_follows_affinity_and_quota(tmp_path):
    assert cpu_threads.available_cores(affinity=[0, 1, 2, 3], quota=None, cgroup_root=tmp_path) == 4
    assert cpu_threads.available_cores(affinity=[0, 1, 2, 3], quota=1.5) == 2
    assert cpu_threads.available_cores(affinity=[5], quota=8.0) == 1
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_threads.cgroup_cpu_limit(tmp_path) == 1.5
    assert cpu_threads.available_cores(affinity=range(16), cgroup_root=tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_threads.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpu_threads.cgroup_cpu_limit(v1) == 3.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert cpu_threads.cgroup_cpu_limit(v1) is None
    assert 1 <= cpu_threads.available_cores() <= (os.cpu_count() or 1)


def test_plan_threads_never_starts_more_busy_threads_than_cores():
    for cores in (1, 2, 4, 16):
        for requested in (0, 1, 4, 8, 32):
            plan = cpu_threads.plan_threads(requested, cores)
            assert plan.torch_threads >= 1 and plan.loader_workers <= requested
            assert plan.torch_threads + plan.loader_workers <= max(cores, 1)
    assert cpu_threads.plan_threads(0, 2) == cpu_threads.ThreadPlan(cores=2, torch_threads=2, loader_workers=0)
    assert cpu_threads.plan_threads(4, 2) == cpu_threads.ThreadPlan(cores=2, torch_threads=1, loader_workers=1)
    assert cpu_threads.plan_threads(4, 16) == cpu_threads.ThreadPlan(cores=16, torch_threads=12, loader_workers=4)
    with pytest.raises(ValueError, match="requested_workers"):
        cpu_threads.plan_threads(-1, 2)
    with pytest.raises(ValueError, match="cores"):
        cpu_threads.plan_threads(0, 0)


def test_kernel_environment_sets_thread_and_progress_defaults_and_keeps_the_users(monkeypatch):
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert cpu_threads.thread_environment(2, {"MKL_NUM_THREADS": "1"}) == {
        n: "2" for n in cpu_threads.THREAD_ENV_VARS if n != "MKL_NUM_THREADS"}
    with kernel_environment(2) as extra:
        assert os.environ["OMP_NUM_THREADS"] == "2" and os.environ["TQDM_MININTERVAL"] == "1"
        assert os.environ["MKL_NUM_THREADS"] == "1" and "MKL_NUM_THREADS" not in extra
    assert "OMP_NUM_THREADS" not in os.environ and "TQDM_MININTERVAL" not in os.environ
    assert os.environ["MKL_NUM_THREADS"] == "1"


def test_competition_warnings_from_injected_rates():
    # a free 2-core machine (the README's run: 189 GFLOP/s), and two hyperthreads of one core: no warning
    assert cpu_threads.competition_warnings(189.4, 96.0, threads=2, cores=2) == []
    assert cpu_threads.competition_warnings(110.0, 95.0, threads=2, cores=2) == []
    # measured here with other sessions busy: two threads slower than one
    shared = cpu_threads.competition_warnings(24.9, 44.5, threads=2, cores=2)
    assert len(shared) == 1 and "parallel efficiency 0.28" in shared[0] and "OMP_NUM_THREADS=1" in shared[0]
    both = cpu_threads.competition_warnings(24.9, 44.5, threads=2, cores=2,
                                            busy=[{"pid": 7, "name": "python", "percent": 150}])
    assert len(both) == 2 and "1.5 of 2 core(s) busy: python (pid 7, 150 %)" in both[1]
    assert sum("OMP_NUM_THREADS=1" in w for w in both) == 1  # the remedy said once
    # one thread: the ratio says nothing, the other processes do
    busy = [{"pid": 11, "name": "python", "percent": 98}, {"pid": 12, "name": "python", "percent": 45}]
    found = cpu_threads.competition_warnings(90.0, 90.0, threads=1, cores=2, busy=busy)
    assert len(found) == 1 and "1.4 of 2 core(s) busy" in found[0] and "pid 11" in found[0]
    assert cpu_threads.competition_warnings(90.0, 90.0, 1, 2, busy=[{"pid": 3, "name": "x", "percent": 30}]) == []
    assert "torch uses 4 threads on 2" in cpu_threads.competition_warnings(180.0, 95.0, threads=4, cores=2)[0]


def test_check_threads_measures_single_and_all_threads(monkeypatch):
    import torch

    monkeypatch.setattr(cpu_threads, "available_cores", lambda *a, **k: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    seen = []

    def contended(seconds):
        seen.append(torch.get_num_threads())
        return 40.0 if torch.get_num_threads() == 1 else 24.0

    try:
        check = cpu_threads.check_threads(measure=contended, busy_interval=0)
        assert seen == [1, 2] and torch.get_num_threads() == 2
        assert check.matmul_gflops == 24.0 and check.single_thread_gflops == 40.0 and check.warnings
        record = check.as_record()
        assert record["parallel_efficiency"] == 0.3 and record["cores"] == 2 and "warnings" not in record
        free = cpu_threads.check_threads(measure=lambda s: 95.0 * torch.get_num_threads(), busy_interval=0)
        assert free.warnings == [] and free.parallel_efficiency == pytest.approx(1.0)
    finally:
        torch.set_num_threads(previous)


def test_busy_processes_lists_others_only():
    pytest.importorskip("psutil")
    found = cpu_threads.busy_processes(interval=0.1, min_percent=0)
    assert found is not None and all(p["pid"] != os.getpid() for p in found)
    assert all(set(p) == {"pid", "name", "percent"} for p in found)


def test_readme_says_what_sharing_cores_costs():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert re.search(r"two busy processes on a 2-core\s+machine slow training 4-10x", text)


def test_make_lab_opens_the_text_notebooks_as_notebooks(monkeypatch):
    """The project's labconfig, passed by ``make lab`` through JUPYTER_CONFIG_PATH, reaches JupyterLab's settings
    overrides: Python files open in jupytext's notebook view on double-click."""
    from jupyter_server.services.config.manager import ConfigManager

    root = Path(__file__).resolve().parents[1]
    makefile = (root / "Makefile").read_text()
    assert 'JUPYTER_CONFIG_PATH="$(CURDIR)/.jupyter' in makefile
    monkeypatch.setenv("JUPYTER_CONFIG_PATH", str(root / ".jupyter"))
    overrides = ConfigManager(config_dir_name="labconfig").get("default_setting_overrides")
    assert overrides["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]["python"] == "Jupytext Notebook"
    assert "double-click `03_se_cbam_training.py` and it opens as a notebook" in (root / "README.md").read_text()

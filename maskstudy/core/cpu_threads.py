"""CPU threads: how many cores this process may use, how to share them, and whether others are using them.

PyTorch's CPU kernels split work over an OpenMP team of intra-op threads and wait for the slowest one at every
barrier. When another busy process holds a core, one member of the team is descheduled and all the others wait:
on a 2-core machine two such processes slow training 4-10x, far more than the half of the machine they take.
So the runner and the notebooks keep intra-op threads + data-loader workers within the cores this process may
use (:func:`available_cores`: the affinity mask and any cgroup CPU quota, which ``os.cpu_count`` ignores), and the
runner checks at the start whether the cores are shared (:func:`competition_warnings`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: Environment variables that size the thread pools of OpenMP, MKL, OpenBLAS, Accelerate and numexpr.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                   "NUMEXPR_NUM_THREADS")

#: Below this parallel efficiency (rate with all threads / (single-thread rate x threads)) the cores are taken to
#: be shared. A free machine gives 0.7-1.0; two hyperthreads of one core about 0.5-0.6; under competition the
#: threads wait for each other and adding threads makes the product slower (efficiency under 1 / threads).
MIN_PARALLEL_EFFICIENCY = 0.4

#: Other processes using at least this many cores' worth of CPU between them are reported as competition.
BUSY_CORES = 0.9


def cgroup_cpu_limit(cgroup_root: str | Path = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (``docker --cpus``, Kubernetes limits), or None when
    unlimited or unknown. Reads cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``."""
    root = Path(cgroup_root)
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores(affinity: Sequence[int] | None = None, quota: float | None = None,
                    cgroup_root: str | Path = "/sys/fs/cgroup") -> int:
    """How many cores this process may keep busy: the CPUs of its affinity mask (``os.sched_getaffinity``), fewer
    when a cgroup quota allows less (rounded up); ``os.cpu_count()`` where affinity is unknown. At least 1."""
    if affinity is None:
        try:
            affinity = sorted(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # macOS, Windows
            affinity = range(os.cpu_count() or 1)
    cores = len(affinity)
    if quota is None:
        quota = cgroup_cpu_limit(cgroup_root)
    if quota:
        cores = min(cores, math.ceil(quota - 1e-9))
    return max(1, cores)


@dataclass(frozen=True)
class ThreadPlan:
    """Busy threads of one process: torch intra-op threads beside data-loader worker processes (each worker runs
    torch with one thread, as PyTorch sets it), together no more than ``cores``."""

    cores: int
    torch_threads: int
    loader_workers: int


def plan_threads(requested_workers: int = 0, cores: int | None = None) -> ThreadPlan:
    """Split ``cores`` (default :func:`available_cores`) between loader workers and torch threads: the workers get
    what they ask for but leave one core to the main process; torch gets the rest (at least one thread).

    For the call sites that decide worker counts (``train._runtime``'s ``num_workers="auto"``) and thread counts
    (``train`` ``num_threads``, ``FaceCropDataset``'s decoding pool)."""
    if requested_workers < 0:
        raise ValueError(f"requested_workers must be >= 0, got {requested_workers}")
    cores = available_cores() if cores is None else int(cores)
    if cores < 1:
        raise ValueError(f"cores must be >= 1, got {cores}")
    workers = min(int(requested_workers), cores - 1)
    return ThreadPlan(cores=cores, torch_threads=max(1, cores - workers), loader_workers=workers)


def thread_environment(cores: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The thread-pool variables to give a child process (the notebook kernel) so that its libraries start
    ``cores`` threads; variables already set in ``environ`` (default ``os.environ``) are the user's choice and are
    left out."""
    environ = os.environ if environ is None else environ
    return {name: str(cores) for name in THREAD_ENV_VARS if not environ.get(name)}


def pin_torch_threads(cores: int | None = None) -> int:
    """Set torch's intra-op threads to ``cores`` (default: ``OMP_NUM_THREADS`` when the user set it, else
    :func:`available_cores`); returns the number set."""
    import torch

    if cores is None:
        user = os.environ.get("OMP_NUM_THREADS", "").strip()
        cores = int(user) if user.isdigit() and int(user) > 0 else available_cores()
    if torch.get_num_threads() != cores:
        torch.set_num_threads(cores)
    return cores


def busy_processes(interval: float = 0.5, min_percent: float = 20.0) -> list[dict[str, Any]] | None:
    """Other processes using at least ``min_percent`` of a core over ``interval`` seconds (pid, name, percent of
    one core), busiest first; this process and its children are left out. None when psutil is not installed.
    Only processes this one can see are counted (in a container: those of the container)."""
    try:
        import psutil
    except ImportError:
        return None
    me = psutil.Process()
    own = {me.pid} | {child.pid for child in me.children(recursive=True)}
    watched = []
    for process in psutil.process_iter(["pid", "name"]):
        if process.pid in own:
            continue
        try:
            process.cpu_percent(None)
            watched.append(process)
        except (psutil.Error, OSError):
            continue
    time.sleep(interval)
    found = []
    for process in watched:
        try:
            percent = process.cpu_percent(None)
        except (psutil.Error, OSError):
            continue
        if percent >= min_percent:
            found.append({"pid": process.pid, "name": process.info.get("name") or "?", "percent": round(percent)})
    return sorted(found, key=lambda p: -p["percent"])


@dataclass
class ThreadCheck:
    """What the runner measured at the start: the cores, torch's threads, the fp32 matmul rate with them and with
    one thread, other busy processes and the load average (recorded only: in a container it counts the whole
    host), and the warnings drawn from them."""

    cores: int
    torch_threads: int
    matmul_gflops: float
    single_thread_gflops: float
    busy_processes: list[dict[str, Any]] | None = None
    load_average: list[float] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def parallel_efficiency(self) -> float | None:
        return parallel_efficiency(self.matmul_gflops, self.single_thread_gflops, self.torch_threads)

    def as_record(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("warnings")
        efficiency = self.parallel_efficiency
        record["parallel_efficiency"] = None if efficiency is None else round(efficiency, 2)
        return record


def parallel_efficiency(gflops: float, single_thread_gflops: float, threads: int) -> float | None:
    """``gflops / (single_thread_gflops * threads)``: 1 when every thread adds a full core; None when undefined."""
    if threads < 1 or not single_thread_gflops or single_thread_gflops <= 0:
        return None
    return gflops / (single_thread_gflops * threads)


def competition_warnings(gflops: float, single_thread_gflops: float, threads: int, cores: int,
                         busy: Sequence[Mapping[str, Any]] | None = None,
                         min_efficiency: float = MIN_PARALLEL_EFFICIENCY,
                         busy_cores: float = BUSY_CORES) -> list[str]:
    """Warnings when the run shares its cores: (1) the fp32 matmul rate with ``threads`` threads is far below
    ``threads`` x the single-thread rate (parallel efficiency under ``min_efficiency``); (2) other processes use
    ``busy_cores`` cores or more between them (``busy`` from :func:`busy_processes`). Empty when neither holds."""
    warnings = []
    remedy = ("stop the other jobs, or give this run fewer threads (e.g. OMP_NUM_THREADS=1 python -m maskstudy "
              "run ...); wall times of this run are not comparable with an unshared machine's")
    if threads > cores:
        warnings.append(f"torch uses {threads} threads on {cores} available core(s): threads wait for each other; "
                        f"set OMP_NUM_THREADS={cores} or fewer")
    efficiency = parallel_efficiency(gflops, single_thread_gflops, threads)
    if threads > 1 and efficiency is not None and efficiency < min_efficiency:
        warnings.append(f"the CPU looks shared with other busy processes: fp32 matmul {gflops:.0f} GFLOP/s with "
                        f"{threads} threads vs {single_thread_gflops:.0f} GFLOP/s with one (parallel efficiency "
                        f"{efficiency:.2f}, expected >= {min_efficiency}); PyTorch then runs several times slower; "
                        + remedy)
    if busy:
        total = sum(float(p.get("percent", 0)) for p in busy) / 100
        if total >= busy_cores:
            names = ", ".join(f"{p.get('name', '?')} (pid {p.get('pid', '?')}, {float(p.get('percent', 0)):.0f} %)"
                              for p in list(busy)[:5])
            warnings.append(f"other processes keep {total:.1f} of {cores} core(s) busy: {names}"
                            + ("" if any(remedy in w for w in warnings) else "; " + remedy))
    return warnings


def check_threads(measure=None, busy_interval: float = 0.5) -> ThreadCheck:
    """Pin torch to the available cores in this process (:func:`pin_torch_threads`), measure the fp32 matmul rate
    with one thread and with them, look for other busy processes (first, while this process is idle), and draw
    :func:`competition_warnings`. ``measure(seconds)`` gives the rate with torch's current threads (default
    :func:`matmul_gflops`); ``busy_interval=0`` skips the process scan."""
    import torch

    if measure is None:
        measure = matmul_gflops
    busy = busy_processes(busy_interval) if busy_interval > 0 else None
    cores = available_cores()
    threads = pin_torch_threads()
    single = None
    if threads > 1:
        torch.set_num_threads(1)
        try:
            single = measure(1.0)
        finally:
            torch.set_num_threads(threads)
    gflops = measure(1.5)
    single = gflops if single is None else single
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    check = ThreadCheck(cores=cores, torch_threads=threads, matmul_gflops=gflops, single_thread_gflops=single,
                        busy_processes=busy, load_average=load)
    check.warnings = competition_warnings(gflops, single, threads, cores, busy)
    return check


def matmul_gflops(seconds: float = 1.5, size: int = 1024) -> float:
    """This machine's dense fp32 matmul rate in GFLOP/s (CPU, torch's threads), measured for ``seconds``: the
    yardstick next to which a run's wall times can be read on another machine."""
    import time

    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    count, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        a @ b
        count += 1
    return round(2 * size**3 * count / (time.perf_counter() - began) / 1e9, 1)

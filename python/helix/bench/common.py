"""Shared pieces of the benchmark suites: timing, the machine's ceilings, thread control, JSON, plots,
progress and launching a suite's worker under mpiexec.

Ceilings are measured in the same run as the op they judge (DESIGN.md §7):

- copy bandwidth: a STREAM-like ``np.copyto`` between two arrays much larger than the last-level cache,
  counted as bytes read + bytes written per second (STREAM's convention);
- matmul throughput: NumPy's float32 ``matmul`` (OpenBLAS) of square matrices, 2 n^3 FLOPs per call.

NumPy's OpenBLAS reads OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE when it loads; machine_info() records both
and the core OpenBLAS picked, so a run's ceiling can be judged.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from helix.comm import mpiexec

__all__ = [
    "Timing",
    "time_calls",
    "median_time",
    "copy_bandwidth",
    "matmul_gflops",
    "bf16_matmul_gflops",
    "set_threads",
    "openblas_core",
    "cpu_model",
    "machine_info",
    "write_json",
    "plot_lines",
    "plot_bars",
    "progress",
    "run_mpi_worker",
    "worker_communicator",
    "ROOT",
]

ROOT = Path(__file__).resolve().parents[3]  # the repository root (python/helix/bench/common.py)

_T = TypeVar("_T")


@dataclass(frozen=True)
class Timing:
    """Seconds of one call: median and minimum over ``n`` timed calls (after one warm-up call)."""

    median: float
    min: float
    n: int

    def __post_init__(self) -> None:
        if self.n < 1 or not self.min > 0 or self.median < self.min:
            raise ValueError(f"bad timing: median {self.median}, min {self.min}, n {self.n}")


def time_calls(
    fn: Callable[[], object], repeats: int = 5, min_seconds: float = 0.0, warmup: int = 1
) -> Timing:
    """Times ``fn()`` at least ``repeats`` times and for at least ``min_seconds`` in all (at most 1000
    calls), after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append(max(time.perf_counter() - t0, 1e-9))
    return Timing(statistics.median(times), min(times), len(times))


def median_time(fn: Callable[[], object], repeats: int, min_seconds: float) -> float:
    """Median wall time of one call (see time_calls)."""
    return time_calls(fn, repeats, min_seconds).median


def copy_bandwidth(nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """STREAM-like copy, GB/s counting read + write: best of ``repeats`` np.copyto of ``nbytes``-byte arrays.

    The best (not the median) is the ceiling: it is the least disturbed pass. Threads: NumPy's copy is
    single-threaded, so the two-thread figure runs one copy per thread on halves of the arrays."""
    n = max(1, nbytes // 4)
    src = np.ones(n, np.float32)
    dst = np.zeros_like(src)
    threads = _blas_threads()
    if threads <= 1:
        t = time_calls(lambda: np.copyto(dst, src), repeats).min
    else:
        from concurrent.futures import ThreadPoolExecutor

        parts = np.array_split(np.arange(n), threads)
        bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if len(p)]
        with ThreadPoolExecutor(len(bounds)) as pool:

            def copy_all() -> None:
                list(pool.map(lambda b: np.copyto(dst[b[0] : b[1]], src[b[0] : b[1]]), bounds))

            t = time_calls(copy_all, repeats).min
    return 2 * src.nbytes / t / 1e9


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """NumPy float32 matmul of two n x n matrices, GFLOP/s (best of ``repeats``), on the threads that
    set_threads gave OpenBLAS."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / time_calls(lambda: np.matmul(a, b), repeats).min / 1e9


def bf16_matmul_gflops(n: int = 2048, repeats: int = 5) -> float | None:
    """A bfloat16 matmul of two n x n matrices (PyTorch's CPU kernels: oneDNN, AMX where the CPU has it),
    GFLOP/s (best of ``repeats``), on OMP_NUM_THREADS threads; None when torch is not installed. The
    ceiling for the bf16 attention math, which runs on AMX tiles on such CPUs."""
    try:
        import torch
    except ImportError:
        return None
    gen = torch.Generator().manual_seed(0)
    a = torch.randn((n, n), generator=gen).to(torch.bfloat16)
    b = torch.randn((n, n), generator=gen).to(torch.bfloat16)
    return 2 * n**3 / time_calls(lambda: torch.matmul(a, b), repeats).min / 1e9


# ----------------------------------------------------------------------------------------- threads

_THREADS = {"n": 1}


def _openblas() -> ctypes.CDLL | None:
    """NumPy's bundled OpenBLAS (scipy-openblas), for its core name and thread count; None if not found."""
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__) + ".libs", "libscipy_openblas*.so"))
    return ctypes.CDLL(libs[0]) if libs else None


def _blas_threads() -> int:
    return _THREADS["n"]


def set_threads(n: int) -> None:
    """Threads for NumPy's OpenBLAS, helix's OpenMP kernels, and the copy ceiling."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    _THREADS["n"] = n
    lib = _openblas()
    for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads"):
        fn = getattr(lib, name, None) if lib is not None else None
        if fn is not None:
            fn(n)
            break
    try:
        from helix import _core

        _core.ops.set_num_threads(n)
    except ImportError:
        pass


def openblas_core() -> str | None:
    lib = _openblas()
    if lib is None or not hasattr(lib, "scipy_openblas_get_corename64_"):
        return None
    lib.scipy_openblas_get_corename64_.restype = ctypes.c_char_p
    return lib.scipy_openblas_get_corename64_().decode()


def cpu_model() -> str:
    """The model name, with family/model/stepping (a hypervisor often hides the marketing name) and the
    SIMD extensions that matter here."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or "unknown"
    name = fields.get("model name", platform.processor() or "unknown")
    flags = set(fields.get("flags", "").split())
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    family = f"family {fields.get('cpu family', '?')} model {fields.get('model', '?')}"
    return f"{name} ({family}; {' '.join(simd) or 'no AVX2'})"


def swapped_mib() -> tuple[float, float] | None:
    """MiB swapped (in, out) since boot (Linux /proc/vmstat; None elsewhere): a peer that outgrows the RAM
    pays in swap, which a side-by-side figure must show."""
    try:
        fields = dict(line.split() for line in Path("/proc/vmstat").read_text().splitlines())
        return int(fields["pswpin"]) * 4096 / 2**20, int(fields["pswpout"]) * 4096 / 2**20
    except (OSError, KeyError, ValueError):
        return None


def memory_gib() -> dict[str, float]:
    """RAM and swap of this machine in GiB (Linux /proc/meminfo; empty elsewhere)."""
    try:
        fields = {k: v.split()[0] for k, v in (line.split(":", 1) for line in Path("/proc/meminfo").open())}
        return {"ram": int(fields["MemTotal"]) / 2**20, "swap": int(fields["SwapTotal"]) / 2**20}
    except (OSError, KeyError, ValueError):
        return {}


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """What a reader needs to judge a run: CPU, cores, load, thread settings, BLAS and kernel paths."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg_1_5_15": list(os.getloadavg()),
        "threads": threads if threads is not None else _THREADS["n"],
        "openblas_core": openblas_core(),
        "memory_gib": memory_gib(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        info[var] = os.environ.get(var)
    try:
        from helix import _core

        info["attention_kernels"] = _core.ops.kernel_path()
        info["linear_isa"] = _core.layers.linear_isa()
    except (ImportError, AttributeError):
        pass
    return info


# ------------------------------------------------------------------------------------------ output


def write_json(path: str | Path, obj: Any) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def plot_lines(
    path: str | Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = True,
    logy: bool = False,
) -> Path:
    """One line per series (name -> (x, y)) into a small PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker="o", label=name)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_bars(
    path: str | Path,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    ylabel: str,
    title: str,
    logy: bool = False,
) -> Path:
    """One bar per label, value printed on top, into a small PNG (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=90)
    bars = ax.bar(
        list(labels), list(values), color=["tab:blue", "tab:orange", "tab:green", "tab:red"][: len(labels)]
    )
    for bar, v in zip(bars, values, strict=True):
        ax.annotate(f"{v:.4g}", (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def progress(items: Iterable[_T], desc: str, total: int | None = None, enabled: bool = True) -> Iterable[_T]:
    """A tqdm progress bar on stderr (``enabled=False``: the items unchanged)."""
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, total=total, file=sys.stderr, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------------- MPI

# The environment of every worker launch, as in tests/mpi_launch.py: a rank waiting in MPI gives its core
# away (nanosleep instead of sched_yield) and each rank runs its kernels on `threads` OpenMP threads.
MPI_ENV = {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}


def run_mpi_worker(
    ranks: int, module: str, args: Sequence[str], *, threads: int = 1, timeout: float = 600
) -> None:
    """Runs ``python -m <module> <args>`` on ``ranks`` MPI ranks of ``threads`` OpenMP threads each, output
    passed through (progress shows), wrapped in ``timeout``. Raises RuntimeError if the job fails."""
    env = {**os.environ, **MPI_ENV, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads)}
    python_dir = str(ROOT / "python")
    env["PYTHONPATH"] = python_dir + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    command = [
        "timeout",
        "-k",
        "5",
        str(int(timeout)),
        mpiexec(),
        "-n",
        str(ranks),
        sys.executable,
        "-m",
        module,
        *args,
    ]
    rc = subprocess.run(command, env=env, stdin=subprocess.DEVNULL).returncode
    if rc != 0:
        why = " (timed out)" if rc in (124, 137) else ""
        raise RuntimeError(f"worker failed with exit code {rc}{why}: {' '.join(command)}")


def worker_communicator():
    """A runtime communicator over MPI's COMM_WORLD, owned by the caller (not helix.comm.world()'s cached
    one, which nanobind reports as leaked at exit), with abort-on-exception installed."""
    from mpi4py import MPI

    from helix.comm import abort_on_exception, from_mpi4py

    abort_on_exception()
    return from_mpi4py(MPI.COMM_WORLD)

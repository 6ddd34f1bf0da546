"""The CUDA emulator's fake NCCL (cuda/emulator/nccl.cpp, NCCL over MPI) under mpiexec.

tests/mpi/cuda_emu_nccl_check.cpp is compiled here with the venv's mpicxx against a ten-line stand-in
CUDA runtime header (tests/mpi/cuda_emu_stub/), whose streams run queued "kernels" only when synchronized,
and run as a plain process (one-rank communicators, no MPI) and under mpiexec with 1 to 4 ranks: grouped
send/recv all-to-all, all-reduce in float32 and bfloat16 (rank order, bf16 rounding per step), all-gather
and broadcast in and out of place, splits, errors. Only the exit code counts (see mpi_launch).

In the SIMT-emulator build (HELIX_ENABLE_CUDA=EMULATOR), the CUDA engine itself runs under mpiexec with
cp=2 and tp2cp2 (tests/mpi/test_cuda_emu_decode.py): greedy tokens and logits against the CPU engine; and
failed steps that must leave every rank as it was (tests/mpi/test_failed_steps.py, as for the CPU engine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from failed_steps import make_model, run_failed_steps
from helix import _core
from helix.tiny import make_tiny_model
from mpi_launch import MPI_ENV, ROOT, mpiexec, run_mpi

pytestmark = pytest.mark.mpi

CHECK_SOURCE = ROOT / "tests" / "mpi" / "cuda_emu_nccl_check.cpp"
NCCL_SOURCE = ROOT / "cuda" / "emulator" / "nccl.cpp"
EMULATED = getattr(_core.cuda, "emulated", lambda: False)() and _core.cuda.built_with_nccl()
needs_emulator = pytest.mark.skipif(
    not EMULATED, reason="needs the SIMT-emulator build with NCCL (HELIX_ENABLE_CUDA=EMULATOR)"
)


def _mpicxx() -> str | None:
    beside = Path(mpiexec()).with_name("mpicxx")
    return str(beside) if beside.exists() else shutil.which("mpicxx")


@pytest.fixture(scope="module")
def nccl_check(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cxx = _mpicxx()
    if cxx is None:
        pytest.skip("no mpicxx next to mpiexec or on PATH")
    exe = tmp_path_factory.mktemp("cuda_emu") / "cuda_emu_nccl_check"
    cmd = [
        cxx,
        "-std=c++20",
        "-O1",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-DHELIX_CUDA_EMULATOR=1",
        f"-I{ROOT / 'tests' / 'mpi' / 'cuda_emu_stub'}",
        f"-I{ROOT / 'cuda' / 'emulator' / 'include'}",
        str(NCCL_SOURCE),
        str(CHECK_SOURCE),
        "-o",
        str(exe),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
    return exe


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**MPI_ENV, **os.environ}
    return subprocess.run(
        ["timeout", "-k", "5", str(timeout), *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )


def test_fake_nccl_without_mpi(nccl_check: Path) -> None:
    proc = _run([str(nccl_check), "self"], timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "cuda_emu_nccl_check: ok (self, no MPI)" in proc.stdout


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_fake_nccl_under_mpiexec(nccl_check: Path, n: int) -> None:
    proc = _run([mpiexec(), "-n", str(n), str(nccl_check)], timeout=60)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert f"cuda_emu_nccl_check: ok ({n} ranks)" in proc.stdout


# ---- the CUDA engine on the emulator ---------------------------------------------------------------

# Chunked prefill (11 tokens > max_batch_tokens), KV ownership moving to the next CP rank every 2 positions,
# requests of different lengths finishing at different steps; small because every kernel is emulated.
DECODE = {
    "prompts": [list(range(2, 13)), [7, 8, 9]],
    "max_new_tokens": [5, 3],
    "tokens_per_block": 2,
    "max_batch_tokens": 4,
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cuda_emu_model") / "tiny"
    make_tiny_model(path)
    return path


@needs_emulator
@pytest.mark.parametrize(
    ("tp", "cp", "etp"), [(1, 2, False), (2, 2, False), (2, 2, True)], ids=["cp2", "tp2cp2", "tp2cp2-etp"]
)
def test_cuda_engine_on_emulator_matches_cpu(
    tiny_model: Path, tmp_path: Path, tp: int, cp: int, etp: bool
) -> None:
    """etp: tensor-parallel experts (every rank holds an F-slice of every expert: all routed pairs are local)
    instead of expert-parallel ones (a rank holds whole experts and skips the others' pairs)."""
    spec = tmp_path / "spec.json"
    config = {**DECODE, "model": str(tiny_model), "tp": tp, "cp": cp, "expert_tensor_parallel": etp}
    spec.write_text(json.dumps(config))
    result = run_mpi(
        tp * cp,
        ["-m", "pytest", "tests/mpi/test_cuda_emu_decode.py", "-q", "-p", "no:cacheprovider", "-x"],
        timeout=120,
        env={"HELIX_CUDA_EMU_SPEC": str(spec)},
    )
    assert not result.timed_out, "timed out\n" + result.describe()
    assert result.returncode == 0, result.describe()


@needs_emulator
@pytest.mark.parametrize(("tp", "cp"), [(1, 2), (2, 2)], ids=["cp2", "tp2cp2"])
def test_cuda_engine_failed_steps_on_emulator(tmp_path: Path, tp: int, cp: int) -> None:
    """Every bad step raises the same error on every rank and changes nothing (tests/failed_steps.py)."""
    model = make_model(tmp_path / "model")
    result = run_failed_steps(model, tmp_path, tp, cp, "cuda")
    assert not result.timed_out, "timed out (a rank waiting in a collective?)\n" + result.describe()
    assert result.returncode == 0, result.describe()


@needs_emulator
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_cuda_helix_attention_on_emulator_matches_cpu_twin(n: int) -> None:
    """The CUDA helix_attention (kv_append, paged attention, W_UV, one all-to-all over a host-staged device
    communicator, merge) on every tp x cp layout of n ranks, against the float64 reference and the CPU
    twin."""
    result = run_mpi(
        n,
        [
            "-m",
            "pytest",
            "tests/mpi/test_helix_attention.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-x",
            "-k",
            "cuda",
        ],
        timeout=240,
    )
    assert not result.timed_out, "timed out\n" + result.describe()
    assert result.returncode == 0, result.describe()
    assert result.output.count(" passed") == n, result.describe()

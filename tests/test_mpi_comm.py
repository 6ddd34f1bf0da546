"""The communicator under mpiexec on 1-4 ranks, and the guarantee that a failing rank fails the job fast."""

from __future__ import annotations

import shutil
import textwrap
import time

import pytest
from mpi_launch import ROOT, run_mpi

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_comm_under_mpiexec(n):
    result = run_mpi(
        n, ["-m", "pytest", "tests/mpi/test_comm.py", "-q", "-p", "no:cacheprovider", "-x"], timeout=120
    )
    assert result.returncode == 0, result.describe()
    assert result.output.count(" passed") == n, result.describe()


def test_raising_rank_aborts_the_job(tmp_path):
    program = tmp_path / "raise_on_rank_1.py"
    program.write_text(
        textwrap.dedent("""
        import time
        from helix import comm

        world = comm.world()
        assert comm.abort_on_exception()
        if world.rank == 1:
            time.sleep(0.5)
            raise RuntimeError("deliberate failure on rank 1")
        world.barrier()  # rank 0 (and any other) waits here for a rank that never comes
        print("barrier passed on rank", world.rank, flush=True)
    """)
    )
    start = time.monotonic()
    result = run_mpi(3, [str(program)], timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and not result.timed_out, result.describe()
    assert elapsed < 20, f"took {elapsed:.1f} s\n{result.describe()}"
    assert "[helix rank 1/3]" in result.output and "deliberate failure on rank 1" in result.output, (
        result.describe()
    )
    assert "barrier passed" not in result.output, result.describe()


def test_abort_on_exception_is_off_for_one_process(tmp_path):
    program = tmp_path / "single.py"
    program.write_text("from helix import comm\nassert comm.abort_on_exception() is False\nprint('ok')\n")
    result = run_mpi(1, [str(program)], timeout=60)
    assert result.returncode == 0 and "ok" in result.output, result.describe()


def test_failing_test_on_one_rank_fails_the_job(tmp_path):
    # tests/mpi/conftest.py must turn a failure on rank 1 into MPI_Abort, while rank 0 has passed the
    # same test and waits in the next test's collective.
    shutil.copy(ROOT / "tests" / "mpi" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_fails_on_rank_1.py").write_text(
        textwrap.dedent("""
        from mpi4py import MPI
        from helix import comm

        def test_fails_on_rank_1():
            assert MPI.COMM_WORLD.Get_rank() != 1, "deliberate failure on rank 1"

        def test_collective_after_it():
            comm.world().all_reduce_sum(__import__("numpy").ones(4, "float32"))
    """)
    )
    start = time.monotonic()
    result = run_mpi(2, ["-m", "pytest", str(tmp_path), "-q", "-p", "no:cacheprovider"], timeout=60)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and not result.timed_out, result.describe()
    assert elapsed < 30, f"took {elapsed:.1f} s\n{result.describe()}"
    assert "[rank 1/2] FAILED" in result.output and "deliberate failure on rank 1" in result.output, (
        result.describe()
    )

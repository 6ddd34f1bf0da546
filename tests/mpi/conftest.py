"""pytest under mpiexec: a failure on any rank ends the whole job (MPI_Abort), so it fails, never hangs.

Without this, a rank whose test fails moves on (or exits) while the other ranks wait forever in the next
collective. Each failure is printed to the real stderr with its rank before the abort, because pytest's
own summary would never be reached.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Generator
from typing import Any

import pytest
from helix.comm import ABORT_GRACE_S
from mpi4py import MPI


def _abort(what: str, details: str) -> None:
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    prefix = f"[rank {rank}/{size}] "
    lines = [f"{prefix}{what}; aborting all ranks (MPI_Abort)"]
    lines += [prefix + line for line in details.rstrip("\n").split("\n")]
    err = sys.__stderr__ or sys.stderr
    err.write("\n".join(lines) + "\n")
    err.flush()
    time.sleep(ABORT_GRACE_S)  # mpiexec drops what its proxies have not forwarded at the abort
    MPI.COMM_WORLD.Abort(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report = yield
    if report.failed:
        _abort(f"FAILED {item.nodeid} ({report.when})", report.longreprtext)
    return report


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _abort(f"collection of {report.nodeid or 'the session'} failed", report.longreprtext)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # 5 = no tests collected: a wrong path must not pass silently either.
    if exitstatus != 0:
        _abort(f"pytest exit status {exitstatus}", "")


@pytest.fixture(scope="session")
def mpi_world() -> Any:
    return MPI.COMM_WORLD

"""The Helix attention step under mpiexec on 1-4 ranks (every tp x cp layout, tp2cp2 included)."""

from __future__ import annotations

import pytest
from mpi_launch import run_mpi

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_helix_attention_under_mpiexec(n):
    result = run_mpi(
        n,
        ["-m", "pytest", "tests/mpi/test_helix_attention.py", "-q", "-p", "no:cacheprovider", "-x"],
        timeout=180,
    )
    assert result.returncode == 0, result.describe()
    assert result.output.count(" passed") == n, result.describe()

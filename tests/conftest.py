from __future__ import annotations

import os

import pytest

# tests/mpi/ holds the programs that tests/test_mpi*.py launch under mpiexec; they are not collected here.
collect_ignore = ["mpi"]


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HELIX_SLOW") == "1":
        return
    skip_slow = pytest.mark.skip(reason="slow: set HELIX_SLOW=1 to run")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)

"""Single-process soak (tp = cp = 1): the soak of tests/mpi/soak.py in this process, so that it also runs
against the sanitized build (scripts/test.sh runs it with ASan + UBSan). Under the sanitizers resident
memory is not checked: ASan's quarantine and shadow memory grow it by design."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from helix.comm import self_communicator
from helix.tiny import make_tiny_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "mpi"))
from soak import soak  # noqa: E402
from test_soak import SOAK_MODEL  # noqa: E402

SANITIZED = os.environ.get("HELIX_SANITIZED") == "1"


@pytest.fixture(scope="module")
def soak_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("soak-model")
    make_tiny_model(path, seed=3, **SOAK_MODEL)
    return path


def test_soak_single_process(soak_model):
    summary = soak(
        self_communicator(), str(soak_model), tp=1, cp=1, requests=150, arrival=0.15, max_tokens=128,
        rss_bound_mib=1e9 if SANITIZED else 4.0, max_replay=40,
    )  # fmt: skip
    print(f"soak single process: {summary}")
    assert summary["requests"] == 150 and summary["refused"] > 0 and summary["completed"] > 0
    assert summary["aborted"] > 0 and summary["joined_running_batch"] > 0

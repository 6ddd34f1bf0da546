"""The size-1 communicator (no MPI): every collective is the identity on the data, never in place."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helix import _core, comm


@pytest.fixture
def c() -> _core.Communicator:
    return comm.self_communicator()


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int64, np.uint8])
def test_collectives_copy(c, dtype):
    x = (np.arange(12) % 7).astype(dtype).reshape(1, 3, 4)
    assert (c.rank, c.size) == (0, 1)
    for out in (c.all_to_all(x), c.all_gather(x[0])[None][0], c.broadcast(x, 0)):
        assert out.dtype == x.dtype and out.shape == x.shape
        np.testing.assert_array_equal(out.astype(np.float64), x.astype(np.float64))
        assert not np.shares_memory(out, x)
    assert c.all_gather(x[0]).shape == (1, 3, 4)
    c.barrier()


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_all_reduce_sum_is_identity(c, dtype):
    x = np.linspace(-3, 3, 10).astype(dtype)
    out = c.all_reduce_sum(x)
    assert out.dtype == x.dtype and not np.shares_memory(out, x)
    np.testing.assert_array_equal(out.astype(np.float32), x.astype(np.float32))


def test_zero_size(c):
    assert c.all_to_all(np.zeros((1, 0), np.float32)).shape == (1, 0)
    assert c.all_gather(np.zeros((0, 5), np.int32)).shape == (1, 0, 5)
    assert c.all_reduce_sum(np.zeros(0, np.float32)).shape == (0,)


def test_errors(c):
    with pytest.raises(_core.ArgumentError, match="'send' must have shape \\[size=1, ...\\]"):
        c.all_to_all(np.zeros((2, 3), np.float32))
    with pytest.raises(_core.ArgumentError, match="'root' must be in \\[0, 1\\)"):
        c.broadcast(np.zeros(3, np.float32), 1)
    with pytest.raises(_core.ArgumentError, match="'array' must be float32 or bfloat16"):
        c.all_reduce_sum(np.zeros(3, np.int64))
    with pytest.raises(_core.ArgumentError, match="color must be >= 0"):
        c.split(-1, 0)
    with pytest.raises(ValueError):  # ArgumentError is a ValueError
        c.all_gather(np.zeros((4, 4), np.float32)[:, ::2])


def test_split(c):
    sub = c.split(3, 7)
    assert (sub.rank, sub.size) == (0, 1)
    assert "size=1" in repr(sub)


def test_world_without_mpi_in_the_build_falls_back_to_one_process(monkeypatch):
    """A build without MPI next to a working mpi4py: world() is the size-1 communicator in one process
    (what make_mpi_communicator of cpp/src/no_mpi.cpp raises is a HelixError)."""

    def built_without_mpi(_comm):
        raise _core.HelixError("make_mpi_communicator: helix was built without MPI")

    monkeypatch.setattr(comm, "from_mpi4py", built_without_mpi)
    comm.world.cache_clear()
    try:
        w = comm.world()
        assert (w.rank, w.size) == (0, 1)
    finally:
        comm.world.cache_clear()

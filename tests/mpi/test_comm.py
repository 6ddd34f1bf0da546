"""helix._core.Communicator over MPI against NumPy: run by tests/test_mpi_comm.py on 1 to 4 ranks.

Every rank builds the data of every other rank from seeded generators, so the expected result of each
collective is computed locally and exactly.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from helix import _core, comm
from helix.mapping import Mapping
from mpi4py import MPI
from tolerances import tol

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [
    np.dtype(np.float32),
    BF16,
    np.dtype(np.float16),
    np.dtype(np.int64),
    np.dtype(np.int32),
    np.dtype(np.uint8),
]
SHAPES = [(), (1,), (5,), (3, 7), (0,), (2, 0, 3)]


def data(seed: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Deterministic array for (seed, shape, dtype): any rank can rebuild any other rank's input."""
    rng = np.random.default_rng(seed)
    if dtype.kind in "iu":
        return rng.integers(0, 100, size=shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    """Bit-exact equality of dtype, shape and contents (NaN-safe, any dtype)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    np.testing.assert_array_equal(actual.reshape(-1).view(np.uint8), expected.reshape(-1).view(np.uint8))


def factorizations(n: int) -> list[tuple[int, int]]:
    return [(tp, n // tp) for tp in range(1, n + 1) if n % tp == 0]


@pytest.fixture(scope="module")
def world() -> _core.Communicator:
    return comm.world()


def test_world_matches_mpi4py(world):
    assert isinstance(world, _core.Communicator)
    assert (world.rank, world.size) == (MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size())
    assert comm.world() is world


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("inner", [(), (4,), (3, 5), (0,), (1024, 64)])
def test_all_to_all(world, dtype, inner):
    n, r = world.size, world.rank
    # send[d] of rank s is data(s * 1000 + d): block d of rank s lands in recv[s] of rank d.
    send = np.stack([data(r * 1000 + d, inner, dtype) for d in range(n)])
    keep = send.copy()
    recv = world.all_to_all(send)
    expected = np.stack([data(s * 1000 + r, inner, dtype) for s in range(n)])
    assert recv.dtype == send.dtype and recv.shape == send.shape
    assert_same(recv, expected)
    assert_same(send, keep)  # input untouched


def test_all_to_all_rejects_bad_arguments(world):
    n = world.size
    with pytest.raises(_core.ArgumentError, match="'send' must have shape"):
        world.all_to_all(np.zeros((n + 1, 2), np.float32))
    with pytest.raises(_core.ArgumentError, match="'send' must have shape"):
        world.all_to_all(np.zeros((), np.float32))
    with pytest.raises(_core.ArgumentError, match="'send' must be C-contiguous"):
        world.all_to_all(np.zeros((n, 4), np.float32)[:, ::2])
    with pytest.raises(_core.ArgumentError, match="'send' must be a numpy.ndarray"):
        world.all_to_all([[1.0]] * n)


@pytest.mark.parametrize("shape", [(), (7,), (3, 129), (0,), (100_000,)])
def test_all_reduce_sum_float32(world, shape):
    n, r = world.size, world.rank
    x = data(r, shape, np.dtype(np.float32))
    keep = x.copy()
    out = world.all_reduce_sum(x)
    expected = sum(data(s, shape, np.dtype(np.float32)).astype(np.float64) for s in range(n))
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, np.broadcast_to(expected, shape), **tol("all_reduce_sum", "float32"))
    np.testing.assert_array_equal(x, keep)
    # Every rank ends with bit-identical sums (replicated activations must not drift apart).
    everyone = world.all_gather(out)
    for s in range(n):
        np.testing.assert_array_equal(everyone[s].view(np.uint32), out.view(np.uint32))


@pytest.mark.parametrize("shape", [(), (7,), (3, 129), (0,)])
def test_all_reduce_sum_bfloat16(world, shape):
    n, r = world.size, world.rank
    x = data(r, shape, BF16)
    out = world.all_reduce_sum(x)
    expected = sum(data(s, shape, BF16).astype(np.float64) for s in range(n))
    assert out.dtype == BF16 and out.shape == x.shape
    np.testing.assert_allclose(
        out.astype(np.float64), np.broadcast_to(expected, shape), **tol("all_reduce_sum", "bfloat16")
    )


def test_all_reduce_sum_bfloat16_accumulates_in_float32(world):
    # 256 + 1 + 1 + ... : summed in bf16 every +1 is lost (256..512 has step 2, ties go to even);
    # summed in float32 and rounded once, the result is bf16(256 + n - 1).
    n, r = world.size, world.rank
    x = np.array([256.0 if r == 0 else 1.0], BF16)
    out = world.all_reduce_sum(x)
    assert float(out[0]) == float(np.array([256.0 + n - 1], np.float32).astype(BF16)[0])


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.float16, np.uint8])
def test_all_reduce_sum_rejects_other_dtypes(world, dtype):
    with pytest.raises(_core.ArgumentError, match="'array' must be float32 or bfloat16"):
        world.all_reduce_sum(np.zeros(3, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES)
def test_all_gather(world, dtype, shape):
    n, r = world.size, world.rank
    out = world.all_gather(data(r, shape, dtype))
    expected = np.stack([data(s, shape, dtype) for s in range(n)])
    assert out.dtype == dtype and out.shape == (n, *shape)
    assert_same(out, expected)


@pytest.mark.parametrize("dtype", [np.dtype(np.float32), BF16, np.dtype(np.int64)], ids=str)
@pytest.mark.parametrize("shape", [(), (5,), (4, 33), (0, 2)])
def test_broadcast(world, dtype, shape):
    n, r = world.size, world.rank
    for root in range(n):
        mine = data(r + 10 * root, shape, dtype)
        keep = mine.copy()
        out = world.broadcast(mine, root)
        assert_same(out, data(root + 10 * root, shape, dtype))
        assert_same(mine, keep)


def test_broadcast_rejects_bad_root(world):
    for root in (-1, world.size):
        with pytest.raises(_core.ArgumentError, match="'root' must be in"):
            world.broadcast(np.zeros(2, np.float32), root)


def test_barrier_orders_ranks(world):
    # Rank 0 broadcasts a token only after the barrier: nothing can be observed out of order, and the
    # collectives after a barrier still match up.
    world.barrier()
    token = world.broadcast(np.array([world.rank + 42], np.int64), 0)
    assert int(token[0]) == 42
    world.barrier()


@pytest.mark.parametrize(
    "tp_cp", factorizations(MPI.COMM_WORLD.Get_size()), ids=lambda t: f"tp{t[0]}cp{t[1]}"
)
def test_split_into_cp_and_tp_groups(world, tp_cp):
    tp, cp = tp_cp
    m = Mapping(world.size, tp, cp, world.rank)

    cp_comm = world.split(m.tp_rank, m.cp_rank)
    assert (cp_comm.size, cp_comm.rank) == (cp, m.cp_rank)
    members = cp_comm.all_gather(np.array(world.rank, np.int64))
    assert members.tolist() == m.cp_group

    tp_comm = world.split(m.cp_rank, m.tp_rank)
    assert (tp_comm.size, tp_comm.rank) == (tp, m.tp_rank)
    assert tp_comm.all_gather(np.array(world.rank, np.int64)).tolist() == m.tp_group

    # Head chunk c goes to CP rank c: after the exchange this rank holds chunk cp_rank of every CP peer,
    # i.e. global head chunk tp_rank * cp + cp_rank == rank (its index in the N-wide FFN group).
    heads = 2 * world.size
    per_chunk = m.heads_per_chunk(heads)
    mine = np.arange(m.heads_per_tp_rank(heads), dtype=np.float32) + m.tp_rank * m.heads_per_tp_rank(heads)
    recv = cp_comm.all_to_all(mine.reshape(cp, per_chunk))
    expected_heads = np.arange(m.head_chunk * per_chunk, (m.head_chunk + 1) * per_chunk, dtype=np.float32)
    for peer in range(cp):
        np.testing.assert_array_equal(recv[peer], expected_heads)
    assert m.head_chunk == m.ffn_rank == world.rank

    # Sub-communicators are independent: a reduction over the CP group sums only its members.
    total = cp_comm.all_reduce_sum(np.array([world.rank], np.float32))
    assert float(total[0]) == float(sum(m.cp_group))


def test_split_key_orders_ranks(world):
    rev = world.split(0, -world.rank)
    assert (rev.size, rev.rank) == (world.size, world.size - 1 - world.rank)
    parity = world.split(world.rank % 2, world.rank)
    assert parity.size == len(range(world.rank % 2, world.size, 2))
    assert parity.all_gather(np.array(world.rank, np.int64)).tolist() == list(
        range(world.rank % 2, world.size, 2)
    )


def test_split_rejects_negative_color(world):
    with pytest.raises(_core.ArgumentError, match="color must be >= 0"):
        world.split(-1, 0)


def test_from_mpi4py_sub_communicator():
    sub = MPI.COMM_WORLD.Split(MPI.COMM_WORLD.Get_rank() // 2, 0)
    c = comm.from_mpi4py(sub)
    assert (c.size, c.rank) == (sub.Get_size(), sub.Get_rank())
    assert c.all_gather(np.array(MPI.COMM_WORLD.Get_rank(), np.int64)).tolist() == sub.allgather(
        MPI.COMM_WORLD.Get_rank()
    )
    sub.Free()  # the helix communicator holds its own duplicate
    assert c.all_reduce_sum(np.ones(1, np.float32))[0] == c.size


def test_invalid_handle_raises_mpi_error_string():
    with pytest.raises(_core.HelixError, match="MPI_Comm_dup failed: Invalid communicator"):
        _core.mpi_communicator(12345)
    with pytest.raises(_core.ArgumentError, match="MPI_COMM_NULL"):
        _core.mpi_communicator(MPI._handleof(MPI.COMM_NULL))

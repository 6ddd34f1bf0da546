"""helix.PagedKVCache bindings: allocation, ownership, errors, and that failed calls change nothing."""

from __future__ import annotations

import helix
import ml_dtypes
import numpy as np
import pytest

BF16 = ml_dtypes.bfloat16


def arange_rows(n: int, head_dim: int, dtype=np.float32, base: float = 0.0) -> np.ndarray:
    """[n, head_dim] rows with distinct values (exact in bf16 for small n, head_dim)."""
    rows = base + np.arange(n)[:, None] * 8.0 + np.arange(head_dim)[None, :] / 4.0
    return rows.astype(dtype)


def positions(*ps: int) -> np.ndarray:
    return np.array(ps, dtype=np.int64)


def state(cache: helix.PagedKVCache) -> tuple:
    """Everything observable: free blocks and each sequence's positions and rows."""
    seqs = tuple(
        (sid, cache.positions(sid).tolist(), cache.read(sid).astype(np.float32).tobytes())
        for sid in cache.sequence_ids()
    )
    return cache.num_free_blocks, seqs


def test_construction_and_properties() -> None:
    cache = helix.PagedKVCache(8, 16, 576, dtype="bfloat16", cp_rank=1, cp_size=4)
    assert (cache.num_blocks, cache.num_free_blocks) == (8, 8)
    assert (cache.tokens_per_block, cache.head_dim) == (16, 576)
    assert (cache.dtype, cache.cp_rank, cache.cp_size) == ("bfloat16", 1, 4)
    assert cache.sequence_ids() == []
    assert repr(cache) == (
        "PagedKVCache(num_blocks=8, tokens_per_block=16, head_dim=576, dtype='bfloat16', "
        "cp_rank=1, cp_size=4, sequences=0, free_blocks=8)"
    )
    assert helix.PagedKVCache(1, 1, 1).dtype == "float32"
    assert helix.PagedKVCache(1, 1, 1, dtype=np.float32).dtype == "float32"
    assert helix.PagedKVCache(1, 1, 1, dtype=BF16).dtype == "bfloat16"
    with pytest.raises(AttributeError):
        cache.num_blocks = 3  # read-only


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_blocks": 0}, "num_blocks"),
        ({"tokens_per_block": 0}, "tokens_per_block"),
        ({"head_dim": -1}, "head_dim"),
        ({"dtype": "float16"}, "dtype"),
        ({"dtype": "int64"}, "dtype"),
        ({"dtype": "nonsense"}, "dtype"),
        ({"cp_size": 0}, "cp_size"),
        ({"cp_rank": 2, "cp_size": 2}, "cp_rank"),
        ({"cp_rank": -1}, "cp_rank"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, name: str) -> None:
    args = {"num_blocks": 4, "tokens_per_block": 4, "head_dim": 8} | kwargs
    with pytest.raises(helix.ArgumentError, match=name):
        helix.PagedKVCache(**args)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_append_read_and_block_boundaries(dtype: str) -> None:
    np_dtype = np.float32 if dtype == "float32" else BF16
    tpb, d = 4, 6
    cache = helix.PagedKVCache(5, tpb, d, dtype=dtype)
    cache.add_sequence(3)
    assert cache.has_sequence(3) and 3 in cache and 4 not in cache
    assert cache.read(3).shape == (0, d) and cache.positions(3).shape == (0,)
    rows = arange_rows(13, d, np_dtype)
    expected_free = 5
    for lo, hi in [(0, 3), (3, 4), (4, 4), (4, 9), (9, 13)]:  # fill, cross and end at block boundaries
        need = -(-hi // tpb) - -(-lo // tpb)
        cache.append(3, np.arange(lo, hi, dtype=np.int64), rows[lo:hi])
        expected_free -= need
        assert cache.num_free_blocks == expected_free
        got = cache.read(3)
        assert got.dtype == np_dtype
        np.testing.assert_array_equal(got, rows[:hi])  # bit-exact in both dtypes
        np.testing.assert_array_equal(cache.positions(3), np.arange(hi))
    assert cache.positions(3).dtype == np.int64
    with pytest.raises(helix.KVCacheFullError):  # 13 + 8 tokens need 6 blocks, 5 exist
        cache.append(3, np.arange(13, 21, dtype=np.int64), arange_rows(8, d, np_dtype))


def test_free_list_reuse_and_sequence_ids() -> None:
    cache = helix.PagedKVCache(4, 2, 3)
    for sid in (10, 2, 7):
        cache.add_sequence(sid)
    assert cache.sequence_ids() == [2, 7, 10]
    cache.append(10, positions(0, 1, 2), arange_rows(3, 3))
    cache.append(2, positions(0), arange_rows(1, 3, base=100))
    assert cache.num_free_blocks == 1
    cache.free_sequence(10)
    assert cache.num_free_blocks == 3 and not cache.has_sequence(10)
    cache.append(7, positions(0, 1, 2, 3, 4, 5), arange_rows(6, 3, base=200))
    assert cache.num_free_blocks == 0
    np.testing.assert_array_equal(cache.read(7), arange_rows(6, 3, base=200))
    np.testing.assert_array_equal(cache.read(2), arange_rows(1, 3, base=100))
    cache.free_sequence(7)
    cache.free_sequence(2)
    assert cache.num_free_blocks == 4 and cache.sequence_ids() == []


def test_exhaustion_message_and_unchanged() -> None:
    cache = helix.PagedKVCache(3, 4, 2)
    cache.add_sequence(0)
    cache.add_sequence(1)
    cache.append(0, np.arange(6, dtype=np.int64), arange_rows(6, 2))
    before = state(cache)
    with pytest.raises(helix.KVCacheFullError, match=r"needs 2 more block\(s\) on CP rank 0 .*only 1 of 3"):
        cache.append(0, np.arange(6, 13, dtype=np.int64), arange_rows(7, 2))
    with pytest.raises(helix.KVCacheFullError, match=r"step needs 2 more block"):
        cache.append(1, np.arange(5, dtype=np.int64), arange_rows(5, 2))
    assert isinstance(helix.KVCacheFullError("x"), helix.HelixError)
    assert state(cache) == before


def make_filled_cache() -> helix.PagedKVCache:
    cache = helix.PagedKVCache(6, 4, 3, cp_rank=1, cp_size=2)  # rank 1 owns 4-7, 12-15, ...
    cache.add_sequence(0)
    cache.add_sequence(1)
    cache.append(0, positions(4, 5, 6), arange_rows(3, 3))
    cache.append(1, positions(12), arange_rows(1, 3, base=50))
    return cache


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.add_sequence(0), "sequence 0 already exists"),
        (lambda c: c.append(9, positions(7), arange_rows(1, 3)), "unknown sequence 9"),
        (lambda c: c.free_sequence(9), "unknown sequence 9"),
        (lambda c: c.positions(9), "unknown sequence 9"),
        (lambda c: c.read(9), "unknown sequence 9"),
        (
            lambda c: c.append(0, positions(7, 8), arange_rows(2, 3)),
            r"'positions'.*position 8 .*sequence 0.*CP rank 0",
        ),
        (lambda c: c.append(0, positions(0), arange_rows(1, 3)), r"position 0 .*belongs to CP rank 0"),
        (
            lambda c: c.append(0, positions(7, 5), arange_rows(2, 3)),
            r"'positions'\[1\] = 5 is already held for sequence 0",
        ),
        (
            lambda c: c.append(0, positions(7, 13, 7), arange_rows(3, 3)),
            r"'positions'\[2\] = 7 repeats positions\[0\] for sequence 0",
        ),
        (lambda c: c.append(0, positions(-3), arange_rows(1, 3)), r"'positions'.*-3.*negative"),
        (lambda c: c.append(0, positions(7), arange_rows(2, 3)), r"'rows'.*len\(positions\)"),
        (lambda c: c.append(0, positions(7), arange_rows(1, 4)), r"'rows'.*head_dim"),
        (lambda c: c.append(0, positions(7), arange_rows(1, 3, BF16)), r"'rows'.*float32.*bfloat16"),
        (lambda c: c.append(0, positions(7), arange_rows(1, 3, np.float64)), r"'rows'"),
        (lambda c: c.append(0, positions(7), arange_rows(1, 3)[0]), r"'rows'.*2 dimensions"),
        (lambda c: c.append(0, positions(7), arange_rows(1, 6)[:, ::2]), r"'rows'.*C-contiguous"),
        (lambda c: c.append(0, [7], arange_rows(1, 3)), r"'positions'.*numpy.ndarray"),
        (lambda c: c.append(0, positions(7).astype(np.int32), arange_rows(1, 3)), r"'positions'.*int64"),
        (lambda c: c.append(0, positions(7)[None], arange_rows(1, 3)), r"'positions'.*1 dimensions"),
    ],
)
def test_errors_name_the_problem_and_change_nothing(call, match: str) -> None:
    cache = make_filled_cache()
    before = state(cache)
    with pytest.raises(helix.ArgumentError, match=match):
        call(cache)
    assert state(cache) == before
    # The cache still works afterwards.
    cache.append(0, positions(7), arange_rows(1, 3, base=9))
    assert cache.positions(0).tolist() == [4, 5, 6, 7]


def test_argument_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        helix.PagedKVCache(0, 1, 1)


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
@pytest.mark.parametrize("tpb", [1, 4, 5])
def test_ownership_partitions_the_sequence(cp: int, tpb: int) -> None:
    d = 2
    # Lengths at block boundaries: one short of, exactly at, and one past a multiple of cp blocks.
    for length in (cp * tpb * 2 - 1, cp * tpb * 2, cp * tpb * 2 + 1):
        all_pos = np.arange(length, dtype=np.int64)
        rows = arange_rows(length, d)
        seen = np.zeros(length, dtype=int)
        for rank in range(cp):
            cache = helix.PagedKVCache(8, tpb, d, cp_rank=rank, cp_size=cp)
            cache.add_sequence(0)
            owned = np.array([cache.owns(p) for p in range(length)])
            np.testing.assert_array_equal(owned, (all_pos // tpb) % cp == rank)
            assert [cache.owner_rank(p) for p in range(length)] == list((all_pos // tpb) % cp)
            mine = all_pos[owned]
            assert cache.table.blocks_for_tokens(length)[rank] == -(-len(mine) // tpb)
            if len(mine):
                cache.append(0, mine, rows[mine])
            np.testing.assert_array_equal(cache.positions(0), mine)
            np.testing.assert_array_equal(cache.read(0), rows[mine])
            assert cache.num_blocks - cache.num_free_blocks == -(-len(mine) // tpb)
            seen[mine] += 1
            foreign = [p for p in range(length, length + cp * tpb) if not cache.owns(p)]
            for p in foreign:
                with pytest.raises(helix.ArgumentError, match=f"CP rank {(p // tpb) % cp}"):
                    cache.append(0, positions(p), arange_rows(1, d))
        np.testing.assert_array_equal(seen, 1)  # every position on exactly one rank


def test_decode_appends_one_token_at_a_time() -> None:
    cp, tpb, d = 3, 4, 5
    caches = [helix.PagedKVCache(4, tpb, d, cp_rank=r, cp_size=cp) for r in range(cp)]
    for c in caches:
        c.add_sequence(42)
    rows = arange_rows(37, d)
    for p in range(37):
        (owner,) = [c for c in caches if c.owns(p)]
        owner.append(42, positions(p), rows[p : p + 1])
    merged = sorted(p for c in caches for p in c.positions(42).tolist())
    assert merged == list(range(37))
    for c in caches:
        np.testing.assert_array_equal(c.read(42), rows[c.positions(42)])


def test_out_of_order_positions_pack_densely() -> None:
    cache = helix.PagedKVCache(3, 2, 1, cp_rank=1, cp_size=2)
    cache.add_sequence(0)
    pos = positions(7, 2, 10, 3, 6)
    cache.append(0, pos, pos[:, None].astype(np.float32))
    np.testing.assert_array_equal(cache.positions(0), pos)
    np.testing.assert_array_equal(cache.read(0)[:, 0], pos)
    assert cache.num_free_blocks == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_poison_unused(dtype: str) -> None:
    np_dtype = np.float32 if dtype == "float32" else BF16
    cache = helix.PagedKVCache(6, 4, 3, dtype=dtype)
    cache.add_sequence(0)
    cache.add_sequence(1)
    cache.append(0, np.arange(5, dtype=np.int64), arange_rows(5, 3, np_dtype))
    cache.append(1, np.arange(4, dtype=np.int64), arange_rows(4, 3, np_dtype, base=1))
    before = state(cache)
    cache.poison_unused()  # NaN by default
    assert state(cache) == before  # held rows untouched
    # Refill: the rows that land in previously free or tail slots were NaN, and the new rows overwrite them.
    cache.append(0, np.arange(5, 12, dtype=np.int64), arange_rows(7, 3, np_dtype, base=2))
    got = cache.read(0).astype(np.float32)
    assert not np.isnan(got).any()
    # A fresh sequence placed on poisoned blocks reads back exactly what was written.
    cache.poison_unused(1e30)
    cache.add_sequence(2)
    cache.append(2, positions(0), arange_rows(1, 3, np_dtype, base=3))
    np.testing.assert_array_equal(cache.read(2), arange_rows(1, 3, np_dtype, base=3))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_poison_unused_marks_exactly_the_unused_slots(dtype: str) -> None:
    np_dtype = np.float32 if dtype == "float32" else BF16
    tpb, d = 4, 3
    cache = helix.PagedKVCache(6, tpb, d, dtype=dtype)
    for sid, n in [(0, 5), (1, 4), (2, 0), (3, 1)]:
        cache.add_sequence(sid)
        cache.append(sid, np.arange(n, dtype=np.int64), arange_rows(n, d, np_dtype, base=sid))
    cache.poison_unused()
    pool = cache.read_pool().astype(np.float32)  # [num_blocks, tpb, d]
    used = np.zeros((cache.num_blocks, tpb), dtype=bool)
    for sid in cache.sequence_ids():
        for k, block in enumerate(np.repeat(cache.block_table(sid), tpb)[: len(cache.positions(sid))]):
            used[block, k % tpb] = True
    assert used.sum() == 10
    np.testing.assert_array_equal(np.isnan(pool).all(axis=2), ~used)
    assert not np.isnan(pool[used]).any()


def test_block_table_and_free_list_reuse() -> None:
    cache = helix.PagedKVCache(4, 2, 1)
    cache.add_sequence(0)
    cache.add_sequence(1)
    cache.append(0, np.arange(4, dtype=np.int64), arange_rows(4, 1))
    cache.append(1, np.arange(3, dtype=np.int64), arange_rows(3, 1))
    assert cache.block_table(0).tolist() == [0, 1]  # lowest free block first
    assert cache.block_table(1).tolist() == [2, 3]
    assert cache.block_table(0).dtype == np.int32
    cache.free_sequence(0)
    cache.add_sequence(5)
    cache.append(5, positions(0), arange_rows(1, 1))
    assert cache.block_table(5).tolist() == [0]  # the freed blocks are reused


def test_block_table_binding_keeps_every_cp_ranks_view() -> None:
    """helix.BlockTable as the engines use it: one table per CP rank fed the same steps agrees on every rank's
    free blocks, refuses a bad step with the same message everywhere, and answers admission queries."""
    tables = [helix.BlockTable(4, 2, cp_rank=r, cp_size=2) for r in range(2)]
    one = np.zeros(1, np.int64)
    for t in tables:
        t.add_sequence(0, reserve_tokens=8)  # positions 0-7: 2 blocks on each rank
        assert (t.free_blocks, t.unreserved_blocks) == ([4, 4], [2, 2])
    rows = [t.commit_step(np.arange(5, dtype=np.int64), one, np.zeros(5, np.int64)) for t in tables]
    assert rows[0].tolist() == [0, 1, -1, -1, 2] and rows[1].tolist() == [-1, -1, 0, 1, -1]
    messages = set()
    for t in tables:
        assert t.free_blocks == [2, 3] and t.num_free_blocks == t.free_blocks[t.cp_rank]
        assert t.held_positions(0).tolist() == [0, 1, 2, 3, 4]
        assert t.blocks_for_tokens(9) == [3, 2]
        assert t.can_admit(4) and not t.can_admit(9)  # 9 tokens: 3 blocks on rank 0, 2 unreserved
        with pytest.raises(helix.ArgumentError) as info:
            t.plan_step(positions(5, 3), one, np.zeros(2, np.int64))  # 3 is rank 1's, held
        messages.add(str(info.value))
        assert t.held_positions(0).tolist() == [0, 1, 2, 3, 4]
    assert messages == {"argument 'positions'[1] = 3 is already held for sequence 0"}
    assert repr(tables[1]) == (
        "BlockTable(num_blocks=4, tokens_per_block=2, cp_rank=1, cp_size=2, sequences=1, free_blocks=3)"
    )

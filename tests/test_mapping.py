"""helix.Mapping: rank layout with CP innermost (rank = tp_rank * cp + cp_rank)."""

from __future__ import annotations

import pytest
from helix.mapping import Mapping

LAYOUTS = [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2), (1, 4), (4, 1), (2, 4), (4, 2), (3, 2)]


@pytest.mark.parametrize("tp,cp", LAYOUTS)
def test_groups_partition_the_world(tp, cp):
    n = tp * cp
    maps = [Mapping(n, tp, cp, r) for r in range(n)]
    for r, m in enumerate(maps):
        assert m.rank == r == m.tp_rank * cp + m.cp_rank
        assert 0 <= m.tp_rank < tp and 0 <= m.cp_rank < cp
        # CP group: consecutive ranks, this rank at index cp_rank.
        assert m.cp_group == list(range(m.tp_rank * cp, m.tp_rank * cp + cp))
        assert m.cp_group[m.cp_rank] == r
        # TP group: same cp_rank, this rank at index tp_rank.
        assert len(m.tp_group) == tp and all(x % cp == m.cp_rank for x in m.tp_group)
        assert m.tp_group[m.tp_rank] == r
        # FFN group: all N ranks; the head chunk held after the all-to-all is the index in it.
        assert m.ffn_group == list(range(n))
        assert m.ffn_group[m.ffn_rank] == r and m.head_chunk == m.ffn_rank == r
        # Every peer in my CP group computes the same group; every peer in my TP group too.
        for peer in m.cp_group:
            assert maps[peer].cp_group == m.cp_group
        for peer in m.tp_group:
            assert maps[peer].tp_group == m.tp_group
    # The CP groups partition the world, and so do the TP groups.
    assert sorted(r for m in maps if m.cp_rank == 0 for r in m.cp_group) == list(range(n))
    assert sorted(r for m in maps if m.tp_rank == 0 for r in m.tp_group) == list(range(n))


def test_tp2cp2_by_hand():
    m = Mapping(4, 2, 2, rank=3)
    assert (m.tp_rank, m.cp_rank) == (1, 1)
    assert m.cp_group == [2, 3] and m.tp_group == [1, 3] and m.ffn_group == [0, 1, 2, 3]
    assert m.head_chunk == 3
    assert Mapping(4, 2, 2, rank=1).tp_group == [1, 3]
    assert Mapping(4, 2, 2, rank=2).cp_group == [2, 3]
    assert m.with_rank(0).cp_group == [0, 1]


@pytest.mark.parametrize("tp,cp", LAYOUTS)
def test_head_chunks_cover_all_heads_once(tp, cp):
    n, heads = tp * cp, 128 if 128 % (tp * cp) == 0 else 24
    owners: list[int] = []
    for r in range(n):
        m = Mapping(n, tp, cp, r)
        assert m.heads_per_tp_rank(heads) == heads // tp
        per = m.heads_per_chunk(heads)
        assert per * n == heads
        # The chunk sits inside this rank's TP heads at offset cp_rank.
        tp_first = m.tp_rank * m.heads_per_tp_rank(heads)
        assert m.head_chunk * per == tp_first + m.cp_rank * per
        owners += [r] * per
    assert len(owners) == heads


def test_heads_not_divisible():
    m = Mapping(4, 2, 2)
    with pytest.raises(
        ValueError, match=r"num_heads \(6\) must be divisible by tp_size \* cp_size \(2 \* 2 = 4\)"
    ):
        m.heads_per_chunk(6)
    with pytest.raises(ValueError, match="divisible"):
        m.heads_per_tp_rank(6)  # divisible by tp alone, but not into the tp*cp chunks the step needs
    with pytest.raises(ValueError, match="positive int"):
        m.heads_per_chunk(0)


@pytest.mark.parametrize(
    "args,match",
    [
        ((4, 2, 3), r"world_size \(4\) must equal tp_size \* cp_size \(2 \* 3 = 6\)"),
        ((0, 1, 1), "world_size must be >= 1"),
        ((2, 0, 2), "tp_size must be >= 1"),
        ((2, 2, -1), "cp_size must be >= 1"),
        ((4, 2, 2, 4), r"rank must be in \[0, 4\)"),
        ((4, 2, 2, -1), r"rank must be in \[0, 4\)"),
    ],
)
def test_invalid(args, match):
    with pytest.raises(ValueError, match=match):
        Mapping(*args)


def test_wrong_types():
    with pytest.raises(TypeError, match="tp_size must be an int"):
        Mapping(4, 2.0, 2)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rank must be an int"):
        Mapping(1, 1, 1, True)


def test_pure_python():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, helix.mapping, helix.parallel_config; assert 'helix._core' not in sys.modules"
    python_dir = str(Path(__file__).resolve().parent.parent / "python")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": python_dir})

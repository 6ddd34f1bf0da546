"""The Helix attention step across the ranks of this mpiexec job equals single-process float64 attention.

Every rank draws the same global inputs from the same seed, holds only its shard (its TP heads, its CP
positions), and checks the merged output of its head chunk against helix.reference. device "cuda" runs the
CUDA twin (helix._core.cuda.helix_attention: the exchange over a host-staged device communicator) and also
checks it against the CPU twin on an identical cache; it skips without a CUDA device (the SIMT emulator
counts as one: tests/test_mpi_cuda_emulator.py runs these under mpiexec in the emulator build).
"""

from __future__ import annotations

import helix
import ml_dtypes
import numpy as np
import pytest
from helix import _core, reference
from helix.comm import world
from tolerances import tol

WORLD = world()
N = WORLD.size
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(_core.cuda.device_count() == 0, reason="no CUDA device")),
]


def layouts() -> list[tuple[int, int]]:
    return [(tp, N // tp) for tp in range(1, N + 1) if N % tp == 0]


class Shard:
    """One rank's view of a Helix layout: its CP communicator, its KV cache, its heads."""

    def __init__(self, tp: int, cp: int, heads: int, D: int, dtype: str, num_blocks: int, tpb: int) -> None:
        self.tp, self.cp = tp, cp
        self.tp_rank, self.cp_rank = WORLD.rank // cp, WORLD.rank % cp
        self.comm = WORLD.split(self.tp_rank, self.cp_rank)
        self.cache = helix.PagedKVCache(num_blocks, tpb, D, dtype, self.cp_rank, cp)
        self.h_tp, self.h_c = heads // tp, heads // (tp * cp)

    def tp_heads(self) -> slice:
        return slice(self.tp_rank * self.h_tp, (self.tp_rank + 1) * self.h_tp)

    def chunk_heads(self) -> slice:
        first = WORLD.rank * self.h_c  # chunk index = tp_rank * cp + cp_rank = rank
        return slice(first, first + self.h_c)


def run_steps(
    tp,
    cp,
    steps,
    heads=3 * N,
    R=32,
    P=16,
    tpb=4,
    dtype="float32",
    with_wuv=False,
    seed=0,
    device="cpu",
    form=None,
    head_group=0,
):
    """steps: list of {seq_index: number of new tokens}. Checks every step against the reference (and, on
    cuda, against the CPU twin run on a second, identical cache). form: None, or the form the CPU is forced to
    run ('auto', 'absorbed', 'expanded'), the op then also given q_expanded and W_UK (bfloat16 with a
    bfloat16 cache, as the engine holds them) and q absorbed from them. head_group: the heads the expanded
    form up-projects per call (0: its own choice)."""
    if form is None:
        return _run_steps(tp, cp, steps, heads, R, P, tpb, dtype, with_wuv, seed, device, None)
    _core.set_attention_form(form)
    _core.set_expanded_head_group(head_group)
    try:
        return _run_steps(tp, cp, steps, heads, R, P, tpb, dtype, with_wuv, seed, device, form)
    finally:
        _core.set_attention_form("auto")
        _core.set_expanded_head_group(0)


def absorbed_queries(rng, T, heads, R, P, Dn, store):
    """q_expanded [T, heads, Dn + P] f32, w_uk [heads, R, Dn] (store dtype) and q = [W_UK q_nope | q_pe] in
    float32 (for the op) and float64 (for the reference)."""
    q_exp = rng.standard_normal((T, heads, Dn + P)).astype(np.float32)
    w_uk = (rng.standard_normal((heads, R, Dn)) / np.sqrt(Dn)).astype(store)
    q64 = np.concatenate(
        [
            np.einsum("hrd,thd->thr", w_uk.astype(np.float64), q_exp[..., :Dn].astype(np.float64)),
            q_exp[..., Dn:],
        ],
        axis=-1,
    )
    return q_exp, w_uk, q64.astype(np.float32), q64


def _run_steps(tp, cp, steps, heads, R, P, tpb, dtype, with_wuv, seed, device, form):
    rng = np.random.default_rng(seed)
    D, Dv, Dn = R + P, 24, 16
    scale = 1.0 / np.sqrt(D)
    shard = Shard(tp, cp, heads, D, dtype, num_blocks=64, tpb=tpb)
    twin = helix.PagedKVCache(64, tpb, D, dtype, shard.cp_rank, cp) if device == "cuda" else None
    n_seqs = 1 + max(max(s) for s in steps)
    for b in range(n_seqs):
        shard.cache.add_sequence(100 + b)
        if twin is not None:
            twin.add_sequence(100 + b)
    keys = [np.zeros((0, D)) for _ in range(n_seqs)]
    w_uv = (rng.standard_normal((heads, Dv, R)) / np.sqrt(R)).astype(np.float32)
    store = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    for step in steps:
        seqs = sorted(step)
        positions, q_index, rows = [], [], []
        for b_i, b in enumerate(seqs):
            start = len(keys[b])
            new = rng.standard_normal((step[b], D)).astype(store)
            keys[b] = np.concatenate([keys[b], new.astype(np.float64)])
            positions += range(start, start + step[b])
            q_index += [b_i] * step[b]
            rows.append(new)
        T = len(positions)
        q = rng.standard_normal((T, heads, D)).astype(np.float32)
        q_ref, expanded = q.astype(np.float64), {}
        if form is not None:
            q_exp, w_uk, q, q_ref = absorbed_queries(rng, T, heads, R, P, Dn, store)
            expanded = {
                "q_expanded": np.ascontiguousarray(q_exp[:, shard.tp_heads()]),
                "w_uk": np.ascontiguousarray(w_uk[shard.tp_heads()]),
            }
        if device == "cuda":  # the CUDA kernels read q in the cache's dtype
            q = q.astype(store)
        positions = np.asarray(positions, np.int64)
        args = (
            np.ascontiguousarray(q[:, shard.tp_heads()]),
            np.concatenate(rows),
            positions,
            np.asarray([100 + b for b in seqs], np.int64),
            np.asarray(q_index, np.int64),
            scale,
            R,
            np.ascontiguousarray(w_uv[shard.tp_heads()]) if with_wuv else None,
        )
        op = _core.helix_attention if device == "cpu" else _core.cuda.helix_attention
        out = op(shard.comm, shard.cache, *args, **expanded)
        if twin is not None:
            np.testing.assert_allclose(
                out,
                _core.helix_attention(shard.comm, twin, *args, **expanded),
                **tol("cuda.helix_attention", dtype),
            )
        for t in range(T):
            b = seqs[q_index[t]]
            o_ref, _ = reference.mla_attention(
                q_ref[t : t + 1],
                keys[b],
                positions[t : t + 1],
                np.arange(len(keys[b])),
                scale,
                R,
            )
            want = o_ref[0, shard.chunk_heads()]
            if with_wuv:
                want = np.einsum("hvr,hr->hv", w_uv[shard.chunk_heads()].astype(np.float64), want)
            np.testing.assert_allclose(out[t], want, **tol("helix_attention", dtype))
    return shard


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tp,cp", layouts())
def test_prefill_then_decode_across_block_boundaries(tp, cp, device):
    # 3 heads per chunk (odd). Two sequences of different lengths: a causal prompt chunk each, then
    # decode steps whose new positions cross block boundaries, so the owner rank of the new token rotates.
    steps = [{0: 7, 1: 3}] + [{0: 1, 1: 1}] * 6 + [{1: 5}]
    run_steps(tp, cp, steps, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tp,cp", layouts())
def test_sequences_shorter_than_a_block(tp, cp, device):
    # With tokens_per_block = 4 and 3 tokens, only CP rank 0 holds keys; the others merge (0, -inf).
    run_steps(tp, cp, [{0: 3}, {0: 1}], device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tp,cp", layouts())
def test_lengths_at_block_boundaries(tp, cp, device):
    run_steps(tp, cp, [{0: 4, 1: 8, 2: 12}, {0: 1, 1: 1, 2: 1}], device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tp,cp", layouts())
def test_wuv_before_exchange(tp, cp, device):
    run_steps(tp, cp, [{0: 9, 1: 2}, {0: 1, 1: 1}], with_wuv=True, device=device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("tp,cp", layouts())
def test_bfloat16_cache(tp, cp, device):
    run_steps(tp, cp, [{0: 10}, {0: 1}, {0: 1}], dtype="bfloat16", device=device)


def test_every_rank_holds_only_its_positions():
    shard = run_steps(1, N, [{0: 13}, {0: 1}, {0: 1}], tpb=2)
    held = shard.cache.positions(100)
    assert all((p // 2) % N == shard.cp_rank for p in held)
    total = WORLD.all_reduce_sum(np.array([len(held)], np.float32))
    assert total[0] == 15


def test_bad_arguments_name_the_argument():
    shard = Shard(1, N, 3 * N, 48, "float32", 8, 4)
    shard.cache.add_sequence(1)
    q = np.zeros((2, 3 * N, 48), np.float32)
    kv = np.zeros((2, 48), np.float32)
    pos = np.arange(2, dtype=np.int64)
    with pytest.raises(helix.ArgumentError, match="q_seq_index"):
        _core.helix_attention(
            shard.comm, shard.cache, q, kv, pos, np.array([1], np.int64), np.array([0, 3], np.int64), 0.1, 32
        )
    with pytest.raises(helix.ArgumentError, match="new_kv"):
        _core.helix_attention(
            shard.comm, shard.cache, q, kv[:1], pos, np.array([1], np.int64), np.zeros(2, np.int64), 0.1, 32
        )
    with pytest.raises(helix.ArgumentError, match="seq_ids"):
        _core.helix_attention(
            shard.comm, shard.cache, q, kv, pos, np.array([7], np.int64), np.zeros(2, np.int64), 0.1, 32
        )


@pytest.mark.parametrize("form", ["absorbed", "expanded"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("with_wuv", [False, True])
def test_forms_agree_with_the_reference(form, dtype, with_wuv):
    # Both forms, forced, on prompt chunks and decode steps of two sequences across block boundaries.
    steps = [{0: 7, 1: 3}] + [{0: 1, 1: 1}] * 3 + [{1: 5}, {0: 2}]
    run_steps(1, N, steps, dtype=dtype, with_wuv=with_wuv, form=form)


@pytest.mark.parametrize("form", ["expanded", "auto"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("with_wuv", [False, True])
def test_forms_on_a_600_token_chunk(form, dtype, with_wuv):
    # Every query token t = 1..600 of one chunk, then a decode step and a short chunk, against the reference,
    # over 38 blocks of 16 rotating across the CP ranks. (At these tiny shapes "auto" picks the absorbed form;
    # tests/cpp/test_attention_form.cpp checks the choice at DeepSeek's shapes.)
    run_steps(1, N, [{0: 600}, {0: 1}, {0: 9}], tpb=16, dtype=dtype, with_wuv=with_wuv, form=form)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("with_wuv", [False, True])
def test_expanded_head_groups_that_do_not_divide_the_heads(dtype, with_wuv):
    # One up-projection call per group of g heads, g not dividing the 3 * N heads (a short last group), so
    # heads on both sides of a group boundary read their own W_UK / W_UV rows of the group's output.
    heads = 3 * N
    g = next(k for k in range(2, heads) if heads % k)
    run_steps(
        1,
        N,
        [{0: 40}, {0: 9}],
        heads=heads,
        tpb=8,
        dtype=dtype,
        with_wuv=with_wuv,
        form="expanded",
        head_group=g,
    )


def test_expanded_head_group_must_not_be_negative():
    with pytest.raises(helix.ArgumentError, match="heads"):
        _core.set_expanded_head_group(-1)

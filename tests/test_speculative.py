"""helix.speculative: the speculative sampling rule, checked statistically against the non-speculative
sampler, with the degenerate cases; sampling_probs against helix.generate.sample; the statistics.

The statistical tests draw with fixed seeds and compare the empirical distribution of whole generated
sequences (3 tokens over a 3-token vocabulary, 27 outcomes) against the exact distribution of ordinary
sampling, by a chi-square test at p < 1e-4 (cells with fewer than 5 expected draws pooled). A rule that is
slightly wrong (a residual replaced by p, or acceptance without the p/q ratio) fails the same test: the
power check below runs it on such rules.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from chi_square import chi_square_p_value
from helix.generate import SamplingParams, sample
from helix.speculative import (
    MAX_SPECULATIVE_TOKENS,
    SpeculativeStats,
    check_speculative_tokens,
    sampling_probs,
    speculative_accept,
)

V = 3  # vocabulary of the synthetic models
N_OUT = 3  # tokens per generated sequence: V ** N_OUT outcomes
RUNS = 3000  # ~0.5 s per case; the wrong rules below fail at p < 1e-40

Dist = Callable[[tuple[int, ...]], np.ndarray]


def _table(seed: int, kind: str) -> Dist:
    """A synthetic 'model': a fixed distribution [V] per context, drawn once per context from a seed."""
    memo: dict[tuple[int, ...], np.ndarray] = {}

    def dist(ctx: tuple[int, ...]) -> np.ndarray:
        if ctx not in memo:
            rng = np.random.default_rng([seed, len(ctx), *ctx])
            d = rng.dirichlet(np.full(V, 0.7))
            if kind == "one_hot":
                d = np.eye(V)[rng.integers(V)]
            elif kind == "low":  # mass only on tokens 0 .. V-2
                d[-1] = 0.0
            elif kind == "high":  # mass only on token V-1
                d = np.eye(V)[V - 1]
            elif kind == "sparse":  # a zero where the other model may put mass
                d[rng.integers(V)] = 0.0
            memo[ctx] = d / d.sum()
        return memo[ctx]

    return dist


# (target p, draft q) pairs: independent, equal (every draft accepted), disjoint supports (every draft
# rejected), a one-hot draft, a one-hot target, a target with zeros where the draft has mass.
PAIRS: dict[str, tuple[Dist, Dist]] = {
    "independent": (_table(1, "dense"), _table(2, "dense")),
    "q_equals_p": (_table(3, "dense"), _table(3, "dense")),
    "disjoint": (_table(4, "low"), _table(5, "high")),
    "one_hot_q": (_table(6, "dense"), _table(7, "one_hot")),
    "one_hot_p": (_table(8, "one_hot"), _table(9, "dense")),
    "p_has_zeros": (_table(10, "sparse"), _table(11, "dense")),
}


def _exact(p: Dist) -> dict[tuple[int, ...], float]:
    """Probability of every sequence of N_OUT tokens under ordinary sampling from p."""
    out = {}
    for seq in itertools.product(range(V), repeat=N_OUT):
        out[seq] = math.prod(p(seq[:i])[seq[i]] for i in range(N_OUT))
    return out


def _speculative_runs(p: Dist, q: Dist, k: int, accept, seed: int) -> tuple[Counter, SpeculativeStats]:
    """RUNS sequences of N_OUT tokens, k drafts from q per step, verified against p by ``accept``."""
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    stats = SpeculativeStats(k)
    for _ in range(RUNS):
        ctx: list[int] = []
        while len(ctx) < N_OUT:
            drafts, qs = [], []
            for _ in range(k):
                qs.append(q(tuple(ctx + drafts)))
                drafts.append(int(rng.choice(V, p=qs[-1])))
            ps = np.stack([p(tuple(ctx + drafts[:i])) for i in range(k + 1)])
            emitted = accept(ps, np.stack(qs), drafts, rng)
            stats.record(len(emitted) - 1, min(len(emitted), N_OUT - len(ctx)))
            ctx += emitted
        counts[tuple(ctx[:N_OUT])] += 1
    return counts, stats


@pytest.mark.parametrize(
    ("pair", "k"), [(pair, 2) for pair in PAIRS] + [("independent", 1), ("independent", 3)]
)
def test_speculative_output_distribution_equals_sampling(pair, k):
    p, q = PAIRS[pair]
    counts, stats = _speculative_runs(p, q, k, speculative_accept, seed=k)
    assert chi_square_p_value(counts, _exact(p), RUNS) > 1e-4
    if pair == "q_equals_p":
        assert stats.acceptance_rate == 1.0 and stats.mean_accepted_tokens == k
    if pair == "disjoint":
        assert stats.accepted == 0
    if pair == "one_hot_q":  # a one-hot draft is accepted with probability p(x)
        assert 0.0 < stats.acceptance_rate < 1.0


def _residual_replaced_by_p(ps, qs, drafts, rng):
    """Wrong: resamples from p instead of the residual after a rejection."""
    out = []
    for i, x in enumerate(drafts):
        if rng.random() * qs[i, x] < ps[i, x]:
            out.append(x)
            continue
        return out + [int(rng.choice(V, p=ps[i]))]
    return out + [int(rng.choice(V, p=ps[-1]))]


def _accept_without_ratio(ps, qs, drafts, rng):
    """Wrong: accepts every draft the target can produce."""
    out = []
    for i, x in enumerate(drafts):
        if ps[i, x] > 0:
            out.append(x)
            continue
        return out + [int(rng.choice(V, p=ps[i]))]
    return out + [int(rng.choice(V, p=ps[-1]))]


@pytest.mark.parametrize("wrong_rule", [_residual_replaced_by_p, _accept_without_ratio])
def test_the_check_rejects_wrong_rules(wrong_rule):
    p, q = PAIRS["independent"]
    counts, _ = _speculative_runs(p, q, 2, wrong_rule, seed=0)
    assert chi_square_p_value(counts, _exact(p), RUNS) < 1e-4


def test_greedy_is_argmax_token_for_token():
    """One-hot p and q (sampling_probs at temperature 0): a draft is kept exactly when it is p's argmax, and
    the step emits p's argmax sequence up to the first mismatch, plus the correction or the bonus."""
    rng = np.random.default_rng(0)
    greedy = SamplingParams(temperature=0.0)
    for _ in range(200):
        logits = rng.normal(size=(4, 6))
        target = [int(np.argmax(row)) for row in logits]
        drafts = [t if rng.random() < 0.6 else (t + 1) % 6 for t in target[:3]]
        q = np.stack([np.eye(6)[rng.integers(6)] for _ in range(3)])  # the draft's own argmax, any
        p = np.stack([sampling_probs(row, greedy) for row in logits])
        out = speculative_accept(p, q, drafts, rng)
        j = next((i for i, (d, t) in enumerate(zip(drafts, target, strict=False)) if d != t), 3)
        assert out == target[: j + 1]


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7),
        SamplingParams(temperature=1.3, top_k=4),
        SamplingParams(temperature=1.0, top_p=0.6),
        SamplingParams(temperature=0.9, top_k=5, top_p=0.8),
    ],
    ids=["temperature", "top_k", "top_p", "top_k_top_p"],
)
def test_sampling_probs_is_what_sample_draws_from(params):
    """The distribution the speculative rule uses for p and q is the one helix.generate.sample draws from:
    the same support and frequencies (chi-square, 8000 draws over 8 tokens)."""
    logits = np.array([2.0, 1.5, 1.4, 0.3, -0.2, 0.9, -1.0, 1.1])
    probs = sampling_probs(logits, params)
    assert probs.sum() == pytest.approx(1.0) and np.all(probs >= 0)
    rng = np.random.default_rng(1)
    draws = Counter(sample(logits, params, rng) for _ in range(8000))
    exact = {(i,): float(probs[i]) for i in range(8)}
    assert chi_square_p_value(Counter({(t,): c for t, c in draws.items()}), exact, 8000) > 1e-4
    if params.top_k:
        assert np.count_nonzero(probs) <= params.top_k


def test_sampling_probs_greedy_and_filters():
    logits = np.array([0.5, 3.0, 3.0, -1.0])
    np.testing.assert_array_equal(sampling_probs(logits, SamplingParams(temperature=0.0)), [0, 1, 0, 0])
    top1 = sampling_probs(logits, SamplingParams(temperature=1.0, top_k=1))
    assert np.count_nonzero(top1) == 1 and top1.max() == 1.0
    z = np.exp(logits - logits.max())
    np.testing.assert_allclose(sampling_probs(logits, SamplingParams(temperature=1.0)), z / z.sum())
    # top-p keeps the smallest prefix reaching the mass: the two tied leaders hold 0.93 of it
    nucleus = sampling_probs(logits, SamplingParams(temperature=1.0, top_p=0.9))
    np.testing.assert_allclose(nucleus, [0, 0.5, 0.5, 0])
    with pytest.raises(ValueError, match="finite"):
        sampling_probs(np.array([0.0, np.nan]), SamplingParams(temperature=1.0))


def test_bad_arguments_are_named():
    rng = np.random.default_rng(0)
    p, q = np.full((3, 4), 0.25), np.full((2, 4), 0.25)
    speculative_accept(p, q, [0, 1], rng)
    with pytest.raises(ValueError, match="target_probs must have shape"):
        speculative_accept(p[:2], q, [0, 1], rng)
    with pytest.raises(ValueError, match="draft_probs must have shape"):
        speculative_accept(p, q[:, :3], [0, 1], rng)
    with pytest.raises(ValueError, match="draft_probs row 1 sums to"):
        speculative_accept(p, np.array([[0.25] * 4, [0.5] * 4]), [0, 1], rng)
    with pytest.raises(ValueError, match="target_probs must hold finite, non-negative"):
        speculative_accept(np.array([[1.5, -0.5, 0, 0]] * 3), q, [0, 1], rng)
    with pytest.raises(ValueError, match=r"draft_tokens \[0, 4\] must lie in \[0, 4\)"):
        speculative_accept(p, q, [0, 4], rng)
    for bad in (-1, MAX_SPECULATIVE_TOKENS + 1, 1.0, True, "2"):
        with pytest.raises(ValueError, match="speculative_tokens must be an integer in"):
            check_speculative_tokens(bad)
    assert check_speculative_tokens(0) == 0 and check_speculative_tokens(3) == 3


def test_stats():
    s = SpeculativeStats(3)
    s.record(accepted=3, emitted=4)
    s.record(accepted=0, emitted=1)
    s.record(accepted=1, emitted=2)
    assert (s.steps, s.drafted, s.accepted, s.emitted) == (3, 9, 4, 7)
    assert s.acceptance_rate == pytest.approx(4 / 9)
    assert s.mean_accepted_tokens == pytest.approx(4 / 3)
    assert s.draft_acceptance == pytest.approx([2 / 3, 1 / 3, 1 / 3])
    with pytest.raises(ValueError, match="impossible with k=3"):
        s.record(accepted=4, emitted=5)
    with pytest.raises(ValueError, match="impossible with k=3"):
        s.record(accepted=1, emitted=3)
    assert SpeculativeStats(1).acceptance_rate == 0.0

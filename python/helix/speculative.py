"""Speculative sampling: the rule that turns k drafted tokens and the target model's k + 1 distributions into
the tokens of one step, with exactly the target's output distribution (Leviathan et al. 2023, Chen et al.
2023), and the statistics a speculative decoder reports.

Convention: temperature, top-k and top-p shape both distributions the same way. The target's p and the
draft's q are each ``sampling_probs(logits, params)``: the distribution ``helix.generate.sample`` draws from
(top-k keeps the k largest logits, then top-p the smallest prefix by decreasing probability whose mass reaches
top_p, renormalized). Drafts are drawn from q. Greedy (temperature 0) is the same rule on one-hot p and q at
the argmax (first index on ties, as np.argmax): a draft is accepted exactly when it is the target's argmax,
and the output is the non-speculative greedy output token for token.

The rule, for drafts x_1..x_k and target rows p_1..p_{k+1} (p_i conditioned on the accepted prefix):
accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection emit a token drawn from the
residual normalize(max(0, p_i - q_i)) and stop; when all k are accepted emit a bonus token from p_{k+1}. A
step therefore emits between 1 and k + 1 tokens. Pure NumPy: imports nothing compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from helix.generate import SamplingParams

__all__ = [
    "MAX_SPECULATIVE_TOKENS",
    "SpeculativeStats",
    "check_speculative_tokens",
    "sampling_probs",
    "speculative_accept",
]

# Drafts per step: DeepSeek's one MTP layer applied recursively; acceptance falls with every further draft.
MAX_SPECULATIVE_TOKENS = 3


def check_speculative_tokens(k: object) -> int:
    """``speculative_tokens`` as an int in [0, MAX_SPECULATIVE_TOKENS] (0: speculative decoding off)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_SPECULATIVE_TOKENS:
        raise ValueError(
            f"speculative_tokens must be an integer in [0, {MAX_SPECULATIVE_TOKENS}] (0: off), got {k!r}"
        )
    return k


def sampling_probs(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution [V] (float64, sums to 1) ``helix.generate.sample(logits, params, rng)`` draws from:
    one-hot at the argmax for temperature 0, else softmax(logits / temperature) restricted to the top-k, then
    to the top-p nucleus, renormalized. logits [V], finite."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 1 or z.size == 0 or not np.all(np.isfinite(z)):
        raise ValueError(f"logits must be a non-empty finite vector, got shape {z.shape}")
    v = z.shape[0]
    out = np.zeros(v)
    if params.temperature == 0.0:
        out[int(np.argmax(z))] = 1.0
        return out
    z = z / params.temperature
    weights = np.exp(z - z.max())
    keep = np.arange(v)
    if 0 < params.top_k < v:
        keep = np.argpartition(-z, params.top_k - 1)[: params.top_k]
    if params.top_p < 1.0:
        order = keep[np.argsort(-z[keep], kind="stable")]
        mass = np.cumsum(weights[order]) / weights[order].sum()
        keep = order[: min(len(order), int(np.searchsorted(mass, params.top_p)) + 1)]
    out[keep] = weights[keep]
    return out / out.sum()


def _draw(probs: np.ndarray, rng: np.random.Generator) -> int:
    """Index i with probability probs[i] / sum(probs) (one uniform draw)."""
    c = np.cumsum(probs)
    return int(min(np.searchsorted(c, rng.random() * c[-1], side="right"), len(c) - 1))


def _check_probs(name: str, probs: np.ndarray, rows: int, vocab: int | None) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != rows or (vocab is not None and probs.shape[1] != vocab):
        want = f"[{rows}, {'V' if vocab is None else vocab}]"
        raise ValueError(f"{name} must have shape {want}, got {list(probs.shape)}")
    if probs.shape[1] == 0 or not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError(f"{name} must hold finite, non-negative probabilities over a non-empty vocabulary")
    bad = np.flatnonzero(np.abs(probs.sum(axis=1) - 1.0) > 1e-6)
    if bad.size:
        raise ValueError(f"{name} row {int(bad[0])} sums to {probs[bad[0]].sum()!r}, not 1")
    return probs


def speculative_accept(
    target_probs: np.ndarray, draft_probs: np.ndarray, draft_tokens: list[int], rng: np.random.Generator
) -> list[int]:
    """The tokens one speculative step emits: the accepted prefix of the drafts, then one token from the
    residual at the first rejection or, when every draft is accepted, a bonus token from the last row.

    target_probs [k + 1, V]: the target's distribution at each draft and after the last (sampling_probs of
    the verify step's logits). draft_probs [k, V]: the distribution each draft was drawn from. draft_tokens
    [k] in [0, V). A draft with q(x) = 0 (not drawn from q, e.g. a test's forced draft) is accepted when
    p(x) > 0; one with p(x) = 0 is always rejected; a residual with no mass (p = q, reached only through such
    a forced draft or rounding) falls back to p."""
    k = len(draft_tokens)
    p = _check_probs("target_probs", target_probs, k + 1, None)
    q = _check_probs("draft_probs", draft_probs, k, p.shape[1])
    tokens = [int(x) for x in draft_tokens]
    if any(not 0 <= x < p.shape[1] for x in tokens):
        raise ValueError(f"draft_tokens {tokens} must lie in [0, {p.shape[1]})")
    out: list[int] = []
    for i, x in enumerate(tokens):
        if rng.random() * q[i, x] < p[i, x]:  # probability min(1, p/q); p > 0 when q = 0
            out.append(x)
            continue
        residual = np.maximum(p[i] - q[i], 0.0)
        out.append(_draw(residual if residual.sum() > 0.0 else p[i], rng))
        return out
    out.append(_draw(p[k], rng))
    return out


@dataclass
class SpeculativeStats:
    """Counts of a speculative decoder over its verify steps (one per sequence per step)."""

    k: int  # drafts proposed per step
    steps: int = 0
    drafted: int = 0  # drafts verified
    accepted: int = 0  # drafts accepted
    emitted: int = (
        0  # tokens emitted (accepted drafts + corrections and bonus tokens, less any cut at the end)
    )
    accepted_at: list[int] = field(default_factory=list)  # [k]: steps whose draft i was accepted

    def __post_init__(self) -> None:
        check_speculative_tokens(self.k)
        if not self.accepted_at:
            self.accepted_at = [0] * self.k

    def record(self, accepted: int, emitted: int) -> None:
        """One verify step of k drafts: ``accepted`` of them (a prefix), ``emitted`` tokens kept."""
        if not 0 <= accepted <= self.k or not 0 <= emitted <= accepted + 1:
            raise ValueError(f"accepted={accepted}, emitted={emitted} impossible with k={self.k}")
        self.steps += 1
        self.drafted += self.k
        self.accepted += accepted
        self.emitted += emitted
        for i in range(accepted):
            self.accepted_at[i] += 1

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / verified drafts."""
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_tokens(self) -> float:
        """Drafts accepted per step, in [0, k]; a step emits one more token than it accepts."""
        return self.accepted / self.steps if self.steps else 0.0

    @property
    def draft_acceptance(self) -> list[float]:
        """[k]: the fraction of steps that accepted draft i (DeepSeek reports 85-90% for i = 0)."""
        return [a / self.steps if self.steps else 0.0 for a in self.accepted_at]

"""Sampled speculative decoding on the engine has the distribution of plain sampling (issue 16, item 3).

A tiny model with an MTP layer and a vocabulary of 6 tokens; temperature 1.5 spreads both the model's and
the drafter's distributions. DRAWS requests (seeds 0..DRAWS-1) generate 3 tokens from one prompt with
speculative_tokens = 2, all in one Scheduler (so in batched steps): the first token is sampled after the
prefill, the next two come from one or two speculative steps (drafts from the MTP layer, accepted with
min(1, p/q), else a token from the residual). Their empirical distribution over the 6^3 sequences is
compared, by a chi-square test at p < 1e-4, with the exact distribution of plain sampling: the product of
the model's own sampling probabilities, read from the engine without speculation for every prefix. The
drafter differs from the model (acceptance well below 1), so a rule that accepted every draft, or
resampled from p instead of the residual, fails.
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from chi_square import chi_square_p_value
from failed_steps import MODEL
from helix import _core
from helix.engine import HelixEngine
from helix.generate import SamplingParams, Scheduler
from helix.speculative import sampling_probs
from helix.tiny import make_tiny_model

VOCAB = 6
PROMPT = [2, 5, 3, 4]
NEW_TOKENS = 3
K = 2
DRAWS = 3000
PARAMS = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.5, ignore_eos=True)
TOKENS_PER_BLOCK = 4
SEQ_TOKENS = 12  # prompt + new tokens + K, in whole blocks


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> HelixEngine:
    path = tmp_path_factory.mktemp("speculative_sampled") / "model"
    make_tiny_model(path, seed=11, mtp=True, **{**MODEL, "vocab_size": VOCAB})
    return HelixEngine(
        str(path), comm=_core.self_communicator(), tokens_per_block=TOKENS_PER_BLOCK,
        max_tokens=DRAWS * SEQ_TOKENS, progress=False, mtp=True,
    )  # fmt: skip


def exact_distribution(engine: HelixEngine) -> dict[tuple[int, ...], float]:
    """P(t1, t2, t3) of plain sampling: one engine step over PROMPT + [t1, t2] for every (t1, t2), whose
    last three rows give p(t1), p(t2 | t1) and p(t3 | t1, t2)."""
    n = len(PROMPT)
    prefixes = list(itertools.product(range(VOCAB), repeat=NEW_TOKENS - 1))
    first = 10**6  # sequence ids apart from the scheduler's
    tokens, positions, q_index, logit_rows = [], [], [], []
    for b, prefix in enumerate(prefixes):
        engine.add_sequence(first + b)
        seq = PROMPT + list(prefix)
        logit_rows += range(len(tokens) + n - 1, len(tokens) + len(seq))
        tokens += seq
        positions += range(len(seq))
        q_index += [b] * len(seq)
    seq_ids = range(first, first + len(prefixes))
    arrays = [np.asarray(list(a), np.int64) for a in (tokens, positions, seq_ids, q_index, logit_rows)]
    logits = engine.step(*arrays).reshape(len(prefixes), NEW_TOKENS, VOCAB)
    for s in seq_ids:
        engine.free_sequence(s)
    probs = np.array([[sampling_probs(row, PARAMS) for row in rows] for rows in logits])  # [36, 3, V]
    exact = {}
    for b, (t1, t2) in enumerate(prefixes):
        for t3 in range(VOCAB):
            exact[(t1, t2, t3)] = probs[b, 0, t1] * probs[b, 1, t2] * probs[b, 2, t3]
    return exact


def test_speculative_sampling_on_the_engine_has_the_plain_distribution(engine):
    exact = exact_distribution(engine)
    assert sum(exact.values()) == pytest.approx(1.0)
    sched = Scheduler(
        engine, engine.eos_token_ids, max_batch_tokens=DRAWS * len(PROMPT), speculative_tokens=K
    )
    for seed in range(DRAWS):
        sched.add(PROMPT, PARAMS, seed)
    outputs = {}
    while sched.has_unfinished():
        for out in sched.step():
            if out.finished:
                outputs[out.request_id] = out
    assert len(outputs) == DRAWS and all(o.finish_reason == "length" for o in outputs.values())
    counts = Counter(tuple(o.token_ids) for o in outputs.values())
    spec = sched.stats.speculative
    # The drafter disagrees with the model (acceptance ~7% here), yet hundreds of drafts are accepted: both
    # branches of the rule shape the sample.
    assert spec.steps >= DRAWS and 0.05 < spec.acceptance_rate < 0.9, spec
    p = chi_square_p_value(counts, exact, DRAWS)
    assert p > 1e-4, f"p = {p:.2e}: the speculative samples are not distributed as plain sampling"

"""helix.reference_mtp: the float64 MTP layer against transformers' own MTP layer (oracle), and the float64
speculative decoder on the reference model.

- Greedy speculative output equals greedy decoding token for token for k = 1..3, with drafts forced to be
  accepted (the known greedy continuation), rejected (any other token) or a seeded mix, and as the MTP
  layer drafts them.
- The draft logits of every step (after the MTP cache was cut back and caught up, step after step) equal a
  from-scratch computation over the accepted tokens.
- Sampled speculative decoding (temperature 1) gives the distribution of ordinary sampling: whole
  3-token continuations on an 8-token vocabulary, chi-square against the exact distribution.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from chi_square import chi_square_p_value
from helix.generate import SamplingParams
from helix.reference_model import ReferenceModel
from helix.reference_mtp import ReferenceMTP, speculative_generate
from helix.speculative import sampling_probs
from helix.tiny import make_tiny_model
from tolerances import tol

PROMPT = [0, 5, 17, 300, 499]
STEPS = 10  # generated tokens per greedy run

# A model small enough for thousands of sampled runs (~3 ms each), with an 8-token vocabulary.
SMALL = {
    "vocab_size": 8, "hidden_size": 32, "intermediate_size": 32, "moe_intermediate_size": 16,
    "num_hidden_layers": 1, "first_k_dense_replace": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
    "q_lora_rank": None, "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 2, "topk_group": 1,
}  # fmt: skip

# Oracle shapes: the default tiny model; and q_proj, two layers, the transformers 5 layout, FP8 blocks.
ORACLE = {
    "default": {"seed": 5},
    "q_proj_t5_fp8": {
        "seed": 6,
        "q_lora_rank": None,
        "num_hidden_layers": 2,
        "layout": "transformers5",
        "fp8": True,
        "dtype": "bfloat16",
    },
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mtp_reference")


@pytest.fixture(scope="module")
def tiny(root) -> tuple[ReferenceModel, ReferenceMTP]:
    make_tiny_model(root / "tiny", seed=5, mtp=True)
    return ReferenceModel.from_pretrained(root / "tiny"), ReferenceMTP.from_pretrained(root / "tiny")


@pytest.fixture(scope="module")
def greedy(tiny) -> list[int]:
    """The greedy continuation, 3 tokens longer than the runs so that accepted drafts can reach past them."""
    return tiny[0].generate_greedy([PROMPT], STEPS + 3).token_ids[0]


@pytest.mark.oracle
@pytest.mark.parametrize("name", list(ORACLE))
def test_draft_logits_match_transformers(root, name, tmp_path_factory):
    """Every row of an 11-token sequence: the main model's hidden state and the MTP layer, transformers'
    modeling code (DeepseekV3ForCausalLM + transformers.modeling_layers.MtpModel) against ours."""
    from hf_oracle import hf_mtp_logits, write_dequantized_copy

    kwargs = ORACLE[name]
    make_tiny_model(root / name, mtp=True, **kwargs)
    hf_dir = root / name
    if kwargs.get("fp8"):
        hf_dir = write_dequantized_copy(hf_dir, tmp_path_factory.mktemp(name + "_dequant"))
    ref, mtp = ReferenceModel.from_pretrained(root / name), ReferenceMTP.from_pretrained(root / name)
    tokens = PROMPT + [42, 7, 999, 3, 64, 1]
    _, logits = mtp.forward(ref.forward_hidden(tokens[:-1]), tokens[1:], mtp.new_cache())
    np.testing.assert_allclose(hf_mtp_logits(str(hf_dir), tokens), logits, **tol("mtp_logits", "float32"))
    hf64 = hf_mtp_logits(str(hf_dir), tokens, float64=True, inv_freq=mtp.rope[0])
    np.testing.assert_allclose(hf64, logits, **tol("mtp_logits", "float64"))


def test_rows_in_chunks_equal_one_pass(tiny):
    """The MTP cache: rows fed in chunks (as speculative steps feed them) give the rows of one pass."""
    ref, mtp = tiny
    tokens = PROMPT + [42, 7, 999, 3]
    hidden = ref.forward_hidden(tokens[:-1])  # [8, D]
    g_one, one = mtp.forward(hidden, tokens[1:], mtp.new_cache())
    cache = mtp.new_cache()
    parts = [mtp.forward(hidden[a:b], tokens[a + 1 : b + 1], cache) for a, b in ((0, 3), (3, 4), (4, 8))]
    np.testing.assert_allclose(np.concatenate([p[1] for p in parts]), one, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([p[0] for p in parts]), g_one, rtol=1e-12, atol=1e-12)
    assert cache.c_kv.shape[0] == 8


def _hook(mode: str, greedy: list[int]):
    """Draft hook: 'accept' drafts the greedy token, 'reject' another one, 'mixed' either (seeded), 'mtp'
    keeps the MTP layer's own draft."""
    rng = np.random.default_rng(11)

    def hook(position: int, token: int) -> int:
        right = greedy[position - len(PROMPT)]
        if mode == "accept" or (mode == "mixed" and rng.random() < 0.6):
            return right
        return (right + 1 + int(rng.integers(998))) % 1000

    return None if mode == "mtp" else hook


# The MTP layer's own drafts once: with random weights nearly all are rejected.
@pytest.mark.parametrize(
    ("k", "mode"), [(k, mode) for k in (1, 2, 3) for mode in ("accept", "reject", "mixed")] + [(2, "mtp")]
)
def test_greedy_speculative_equals_greedy(tiny, greedy, k, mode):
    ref, mtp = tiny
    out = speculative_generate(ref, mtp, PROMPT, STEPS, k, draft_hook=_hook(mode, greedy))
    assert out.token_ids == greedy[:STEPS]
    s = out.stats
    assert s.emitted == STEPS - 1  # the first token comes from the prompt's pass
    if mode == "accept":
        assert s.acceptance_rate == 1.0 and s.steps == math.ceil((STEPS - 1) / (k + 1))
    if mode == "reject":
        assert s.accepted == 0 and s.steps == STEPS - 1
    if mode == "mixed":
        assert 0.0 < s.acceptance_rate < 1.0
    assert out.draft_positions[0] == len(PROMPT) + 1
    assert all(lg.shape == (k, 1000) for lg in out.draft_logits)


def test_draft_logits_equal_a_from_scratch_computation(tiny, greedy):
    """After each step the MTP cache is cut back to the accepted positions and caught up in the next: the
    draft logits of every step equal the MTP layer run afresh over the accepted tokens, then recursing over
    that step's drafts."""
    ref, mtp = tiny
    k = 3
    out = speculative_generate(ref, mtp, PROMPT, STEPS, k, draft_hook=_hook("mixed", greedy))
    assert len({len(d) for d in out.drafts}) == 1 and 0 < out.stats.accepted < out.stats.drafted
    sequence = PROMPT + out.token_ids
    for first, drafts, logits in zip(out.draft_positions, out.drafts, out.draft_logits, strict=True):
        tokens = sequence[:first]  # t_0 .. t_n, n = first - 1
        cache = mtp.new_cache()
        g, rows = mtp.forward(ref.forward_hidden(tokens[:-1]), tokens[1:], cache)
        expected = [rows[-1]]
        for d in drafts[:-1]:
            g, rows = mtp.forward(g[-1:], [d], cache)
            expected.append(rows[-1])
        np.testing.assert_allclose(logits, np.stack(expected), rtol=1e-9, atol=1e-9)


def test_stop_at_eos_keeps_the_eos_and_stops(tiny, greedy):
    ref, mtp = tiny
    eos = greedy[4]
    ref_eos = copy.copy(ref)
    ref_eos.config = dataclasses.replace(ref.config, eos_token_ids=(eos,))
    expected = ref_eos.generate_greedy([PROMPT], STEPS, stop_at_eos=True).token_ids[0]
    out = speculative_generate(
        ref_eos, mtp, PROMPT, STEPS, 3, draft_hook=_hook("accept", greedy), stop_at_eos=True
    )
    assert out.token_ids == expected and out.token_ids[-1] == eos and len(expected) < STEPS


def test_bad_arguments(tiny):
    ref, mtp = tiny
    with pytest.raises(ValueError, match="speculative_tokens must be an integer in"):
        speculative_generate(ref, mtp, PROMPT, 4, 4)
    with pytest.raises(ValueError, match="k >= 1"):
        speculative_generate(ref, mtp, PROMPT, 4, 0)
    with pytest.raises(ValueError, match="next_tokens must be a non-empty list in"):
        mtp.forward(np.zeros((1, 256)), [1000], mtp.new_cache())
    with pytest.raises(ValueError, match=r"hidden must have shape \[2, 256\]"):
        mtp.forward(np.zeros((1, 256)), [1, 2], mtp.new_cache())
    with pytest.raises(KeyError, match="missing weight 'model.layers.4.embed_tokens.weight'"):
        ReferenceMTP(mtp.config, {})
    with pytest.raises(ValueError, match="no MTP layer"):
        ReferenceMTP(dataclasses.replace(ref.config, num_nextn_predict_layers=0), {})


def test_sampled_speculative_decoding_has_the_sampling_distribution(root):
    """Temperature 1, k = 2, on the 8-token model: 1500 runs of 3 tokens after a 2-token prompt, against
    the exact distribution of ordinary sampling (p(t1) p(t2 | t1) p(t3 | t1 t2) from the reference)."""
    make_tiny_model(root / "small", seed=3, mtp=True, **SMALL)
    ref, mtp = ReferenceModel.from_pretrained(root / "small"), ReferenceMTP.from_pretrained(root / "small")
    params = SamplingParams(max_new_tokens=3, temperature=1.0)
    prompt, runs = [0, 3], 1500

    def probs(context: tuple[int, ...]) -> np.ndarray:
        return sampling_probs(ref.forward(prompt + list(context))[-1], params)

    exact = {}
    for t1, p1 in enumerate(probs(())):
        p2 = probs((t1,))
        for t2 in range(8):
            p3 = probs((t1, t2))
            for t3 in range(8):
                exact[(t1, t2, t3)] = p1 * p2[t2] * p3[t3]
    rng = np.random.default_rng(0)
    counts, accepted = Counter(), 0
    for _ in range(runs):
        out = speculative_generate(ref, mtp, prompt, 3, 2, params, rng)
        counts[tuple(out.token_ids)] += 1
        accepted += out.stats.accepted
    assert 0.1 < accepted / runs < 1.9  # both paths of the rule are taken
    assert chi_square_p_value(counts, exact, runs) > 1e-4

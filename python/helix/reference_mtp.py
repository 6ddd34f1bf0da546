"""Float64 NumPy specification of DeepSeek-V3's multi-token-prediction (MTP) layer, and a speculative decoder
on the reference model that drafts with it, for tests. Imports nothing compiled.

The MTP layer L = num_hidden_layers (tensors model.layers.L.*, helix.model_tensors.expected_mtp_tensors):
row p of its cache is built from the main model's final hidden state h_p and the next token t_{p+1}:

    x_p = eh_proj([enorm(embed(t_{p+1})); hnorm(h_p)])   [D]  embedding first (vLLM, SGLang, transformers)
    g_p = block(x_p)                                      [D]  a decoder block (MLA + MoE), own KV cache
    logits_p = shared_head.head(shared_head.norm(g_p))    [V]  the draft distribution of t_{p+2}

h_p is taken after model.norm (what vLLM, SGLang and transformers feed the MTP layer). Row p sits at RoPE
position p and attends rows 0..p of the MTP cache, so that cache holds exactly the positions the main cache
holds. Drafting k > 1 tokens applies the one layer recursively: draft i + 1 comes from the entry (g of draft
i's row, draft i) one row further on (vLLM's convention; those rows are dropped after drafting).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from helix.checkpoint import Checkpoint
from helix.config import ModelConfig
from helix.generate import SamplingParams, sample
from helix.model_tensors import expected_mtp_tensors
from helix.reference_model import (
    LayerCache,
    ReferenceModel,
    decoder_layer,
    rms_norm,
    truncate_cache,
    yarn_inv_freq,
)
from helix.speculative import SpeculativeStats, check_speculative_tokens, sampling_probs, speculative_accept

__all__ = ["DraftHook", "ReferenceMTP", "SpeculativeOutput", "speculative_generate"]

# (global position of the drafted token, the token the MTP layer drafted) -> the token to verify instead.
# Tests force drafts to be accepted (the known greedy continuation) or rejected (anything else).
DraftHook = Callable[[int, int], int]


class ReferenceMTP:
    """The MTP layer in float64 over a weights dict (name -> array, any float dtype)."""

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray]) -> None:
        names = expected_mtp_tensors(config)
        if not names:
            raise ValueError(f"{config.source}: num_nextn_predict_layers = 0: no MTP layer")
        missing = [n for n in names if n not in weights]
        if missing:
            raise KeyError(f"reference MTP: missing weight {missing[0]!r}")
        self.config = config
        self.w = {n: np.asarray(weights[n], dtype=np.float64) for n in names}
        self.prefix = f"model.layers.{config.mtp_layer_index}."
        self.rope = yarn_inv_freq(config)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path) -> ReferenceMTP:
        config = ModelConfig.from_pretrained(model_dir)
        with Checkpoint.open(model_dir, config) as ckpt:
            return cls(config, ckpt.load_mtp_weights(config, dtype=np.float64))

    def new_cache(self) -> LayerCache:
        c = self.config
        return LayerCache(np.zeros((0, c.kv_lora_rank)), np.zeros((0, c.qk_rope_head_dim)))

    def forward(
        self, hidden: np.ndarray, next_tokens: Sequence[int], cache: LayerCache
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows len(cache) .. len(cache) + T - 1 from hidden [T, D] (h_p, or g_p when recursing) and
        next_tokens [T] (t_{p+1}): (g [T, D], the block's output before shared_head.norm; logits [T, V]).
        The cache is extended in place."""
        c, w, p = self.config, self.w, self.prefix
        ids = np.asarray(next_tokens, dtype=np.int64)
        hidden = np.asarray(hidden, dtype=np.float64)
        if ids.ndim != 1 or ids.size == 0 or ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"next_tokens must be a non-empty list in [0, {c.vocab_size})")
        if hidden.shape != (ids.size, c.hidden_size):
            raise ValueError(
                f"hidden must have shape [{ids.size}, {c.hidden_size}], got {list(hidden.shape)}"
            )
        eps = c.rms_norm_eps
        e = rms_norm(w[p + "embed_tokens.weight"][ids], w[p + "enorm.weight"], eps)
        h = rms_norm(hidden, w[p + "hnorm.weight"], eps)
        x = np.concatenate([e, h], axis=1) @ w[p + "eh_proj.weight"].T  # [T, 2D] -> [T, D]
        positions = cache.c_kv.shape[0] + np.arange(ids.size)
        g = decoder_layer(c, w, p, True, x, positions, cache, self.rope)
        logits = rms_norm(g, w[p + "shared_head.norm.weight"], eps) @ w[p + "shared_head.head.weight"].T
        return g, logits


@dataclass
class SpeculativeOutput:
    """One prompt's speculative decode: the tokens and the counts, and per step (for comparison with the
    runtime) the global position of the first draft, the k drafts verified and the MTP logits [k, V] they
    were drawn from."""

    token_ids: list[int]
    stats: SpeculativeStats
    draft_positions: list[int] = field(default_factory=list)
    drafts: list[list[int]] = field(default_factory=list)
    draft_logits: list[np.ndarray] = field(default_factory=list)


def speculative_generate(
    model: ReferenceModel,
    mtp: ReferenceMTP,
    prompt: Sequence[int],
    max_new_tokens: int,
    k: int,
    params: SamplingParams | None = None,
    rng: np.random.Generator | None = None,
    draft_hook: DraftHook | None = None,
    stop_at_eos: bool = False,
) -> SpeculativeOutput:
    """max_new_tokens tokens after ``prompt`` (fewer when stop_at_eos and an eos id comes; it is kept), k
    drafts per step (1..3) by the MTP layer, verified k + 1 at a time by the model (speculative_accept).
    params None: greedy. Each step, with n tokens in the main cache and t_n the last token:
      1. MTP rows a..n-1 (the rows since the last step, from the verified hidden states) draft t_{n+1};
         rows n..n+k-2 recurse for the later drafts, then the MTP cache is cut back to n rows;
      2. the model runs [t_n, drafts] at positions n..n+k; j drafts are accepted and one more token comes;
      3. the main cache is cut to n + j + 1 rows: both caches hold exactly the accepted positions."""
    k = check_speculative_tokens(k)
    if k == 0:
        raise ValueError("speculative_generate needs k >= 1 drafts per step")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    params = params or SamplingParams(max_new_tokens=max_new_tokens)
    rng = rng or np.random.default_rng(params.seed)
    out = SpeculativeOutput(token_ids=[], stats=SpeculativeStats(k))
    cache, mtp_cache = model.new_cache(), mtp.new_cache()
    hidden = model.forward_hidden(prompt, cache)  # [n, D]: rows not yet fed to the MTP layer
    tokens = list(prompt) + [sample(hidden[-1] @ model.w["lm_head.weight"].T, params, rng)]
    out.token_ids.append(tokens[-1])
    eos = set(model.config.eos_token_ids) if stop_at_eos else set()
    while len(out.token_ids) < max_new_tokens and tokens[-1] not in eos:
        n = len(tokens) - 1
        drafts, q, logits = _draft(mtp, mtp_cache, hidden, tokens, k, params, rng, draft_hook)
        truncate_cache([mtp_cache], n)
        out.draft_positions.append(n + 1)
        out.drafts.append(drafts)
        out.draft_logits.append(logits)
        verified = model.forward_hidden([tokens[n]] + drafts, cache)  # [k + 1, D]
        p = np.stack([sampling_probs(row @ model.w["lm_head.weight"].T, params) for row in verified])
        emitted = speculative_accept(p, q, drafts, rng)
        truncate_cache(cache, n + len(emitted))
        hidden = verified[: len(emitted)]
        kept = _kept(emitted, max_new_tokens - len(out.token_ids), eos)
        out.stats.record(accepted=len(emitted) - 1, emitted=len(kept))
        tokens += emitted
        out.token_ids += kept
        if len(kept) < len(emitted):
            break
    return out


def _draft(
    mtp: ReferenceMTP,
    mtp_cache: LayerCache,
    hidden: np.ndarray,
    tokens: list[int],
    k: int,
    params: SamplingParams,
    rng: np.random.Generator,
    draft_hook: DraftHook | None,
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """(k drafts, q [k, V] they were drawn from, MTP logits [k, V]) after ``tokens`` = t_0 .. t_n.
    hidden [m, D]: the main model's hidden states of the m rows the MTP cache lacks, n - m .. n - 1."""
    n = len(tokens) - 1
    g, logits = mtp.forward(hidden, tokens[n - hidden.shape[0] + 1 :], mtp_cache)
    g, row = g[-1:], logits[-1]
    drafts, q, rows = [], [], []
    for i in range(k):
        q.append(sampling_probs(row, params))
        rows.append(row)
        token = sample(row, params, rng)  # drawn from q[-1]
        drafts.append(draft_hook(n + 1 + i, token) if draft_hook else token)
        if i + 1 < k:
            g, logits = mtp.forward(g, drafts[-1:], mtp_cache)
            row = logits[-1]
    return drafts, np.stack(q), np.stack(rows)


def _kept(emitted: list[int], room: int, eos: set[int]) -> list[int]:
    """The emitted tokens a request keeps: at most ``room``, and none after an eos id."""
    kept = emitted[:room]
    for i, t in enumerate(kept):
        if t in eos:
            return kept[: i + 1]
    return kept

"""Which slice of each checkpoint tensor a rank holds (DESIGN.md §3), under the engine's weight names.

Layout: N = tp * cp ranks, rank = tp_rank * cp + cp_rank.
- q_a / q_b (or q_proj), kv_a and kv_b: replicated over CP, split by heads over TP (H_tp = H / tp heads);
  kv_b is split into W_UK^T [H_tp, R, Dn] and W_UV [H_tp, Dv, R] for the absorbed form.
- o_proj: row-parallel over all N ranks: this rank holds the columns of head chunk `rank` (H / N heads).
- dense MLP and shared experts: tensor-parallel over N (gate and up fused into one [2F/N, hidden] weight).
- routed experts: expert-parallel over N (E / N experts each), or tensor-parallel (each expert's
  intermediate split over N) with expert_tensor_parallel.
- router (gate, correction bias) and norms: replicated, float32.
- embedding and lm_head: split over the vocabulary in shards of ceil(V / N) rows (zero-padded).
- the multi-token-prediction layer (shard_mtp_weights): its block as a MoE layer's, its embedding and
  shared_head.head as the model's, eh_proj [hidden, 2*hidden] and its norms replicated.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from helix.config import ModelConfig

__all__ = ["shard_mtp_weights", "shard_weights", "vocab_shard"]

# reader(name, rows, cols) -> float32 array of checkpoint tensor `name`, sliced
Reader = Callable[[str, "slice | None", "slice | None"], np.ndarray]


def vocab_shard(vocab_size: int, world: int) -> int:
    return -(-vocab_size // world)


def shard_weights(
    cfg: ModelConfig, read: Reader, tp: int, cp: int, rank: int, expert_tensor_parallel: bool = False
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (engine weight name, this rank's float32 shard), one tensor at a time."""
    yield "embed_tokens", _vocab_rows(cfg, read, "model.embed_tokens.weight", tp * cp, rank)
    yield "norm", read("model.norm.weight", None, None)
    yield "lm_head", _vocab_rows(cfg, read, "lm_head.weight", tp * cp, rank)
    for i in range(cfg.num_hidden_layers):
        yield from _decoder_layer(cfg, read, tp, cp, rank, expert_tensor_parallel, i, cfg.is_moe_layer(i))


def shard_mtp_weights(
    cfg: ModelConfig, read: Reader, tp: int, cp: int, rank: int, expert_tensor_parallel: bool = False
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields this rank's shards of the multi-token-prediction layer L = num_hidden_layers under engine names
    ``layers.L.*`` (its checkpoint names less ``model.``): the decoder block exactly as a main MoE layer's;
    embed_tokens and shared_head.head split over the vocabulary like the model's; enorm, hnorm,
    shared_head.norm and eh_proj [hidden, 2*hidden] replicated (eh_proj's input and output are replicated
    hidden states, so splitting it would only add a collective). ValueError without an MTP layer."""
    if cfg.num_nextn_predict_layers == 0:
        raise ValueError(f"{cfg.source}: num_nextn_predict_layers = 0: the model has no MTP layer to shard")
    L = cfg.mtp_layer_index
    p, e = f"model.layers.{L}", f"layers.{L}"
    yield f"{e}.embed_tokens", _vocab_rows(cfg, read, f"{p}.embed_tokens.weight", tp * cp, rank)
    yield f"{e}.enorm", read(f"{p}.enorm.weight", None, None)
    yield f"{e}.hnorm", read(f"{p}.hnorm.weight", None, None)
    yield f"{e}.eh_proj", read(f"{p}.eh_proj.weight", None, None)
    yield from _decoder_layer(cfg, read, tp, cp, rank, expert_tensor_parallel, L, moe=True)
    yield f"{e}.shared_head.norm", read(f"{p}.shared_head.norm.weight", None, None)
    yield f"{e}.shared_head.head", _vocab_rows(cfg, read, f"{p}.shared_head.head.weight", tp * cp, rank)


def _vocab_rows(cfg: ModelConfig, read: Reader, name: str, n: int, rank: int) -> np.ndarray:
    """Rows [rank * vs, (rank + 1) * vs) of a [vocab, hidden] tensor, zero-padded to vs = ceil(V / n)."""
    vs = vocab_shard(cfg.vocab_size, n)
    lo, hi = rank * vs, min(cfg.vocab_size, (rank + 1) * vs)
    out = np.zeros((vs, cfg.hidden_size), np.float32)
    if hi > lo:
        out[: hi - lo] = read(name, slice(lo, hi), None)
    return out


def _decoder_layer(
    cfg: ModelConfig,
    read: Reader,
    tp: int,
    cp: int,
    rank: int,
    expert_tensor_parallel: bool,
    i: int,
    moe: bool,
) -> Iterator[tuple[str, np.ndarray]]:
    """This rank's shards of decoder block ``model.layers.i`` (engine names ``layers.i.*``)."""
    n = tp * cp
    tp_rank = rank // cp
    heads = cfg.num_attention_heads
    h_tp, h_c = heads // tp, heads // n
    dq = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
    dn, dv, r = cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank

    def fused_gate_up(prefix: str, lo: int, hi: int) -> np.ndarray:
        return np.concatenate(
            [
                read(f"{prefix}.gate_proj.weight", slice(lo, hi), None),
                read(f"{prefix}.up_proj.weight", slice(lo, hi), None),
            ]
        )

    p, e = f"model.layers.{i}", f"layers.{i}"
    yield f"{e}.input_layernorm", read(f"{p}.input_layernorm.weight", None, None)
    yield f"{e}.post_attention_layernorm", read(f"{p}.post_attention_layernorm.weight", None, None)
    q_rows = slice(tp_rank * h_tp * dq, (tp_rank + 1) * h_tp * dq)
    if cfg.q_lora_rank:
        yield f"{e}.q_a_proj", read(f"{p}.self_attn.q_a_proj.weight", None, None)
        yield f"{e}.q_a_layernorm", read(f"{p}.self_attn.q_a_layernorm.weight", None, None)
        yield f"{e}.q_b_proj", read(f"{p}.self_attn.q_b_proj.weight", q_rows, None)
    else:
        yield f"{e}.q_proj", read(f"{p}.self_attn.q_proj.weight", q_rows, None)
    yield f"{e}.kv_a_proj_with_mqa", read(f"{p}.self_attn.kv_a_proj_with_mqa.weight", None, None)
    yield f"{e}.kv_a_layernorm", read(f"{p}.self_attn.kv_a_layernorm.weight", None, None)
    kv_b = read(
        f"{p}.self_attn.kv_b_proj.weight",
        slice(tp_rank * h_tp * (dn + dv), (tp_rank + 1) * h_tp * (dn + dv)),
        None,
    )
    kv_b = kv_b.reshape(h_tp, dn + dv, r)
    yield f"{e}.w_uk", np.ascontiguousarray(kv_b[:, :dn].transpose(0, 2, 1))  # W_UK^T [H_tp, R, Dn]
    yield f"{e}.w_uv", np.ascontiguousarray(kv_b[:, dn:])
    yield (
        f"{e}.o_proj",
        read(f"{p}.self_attn.o_proj.weight", None, slice(rank * h_c * dv, (rank + 1) * h_c * dv)),
    )
    if moe:
        yield f"{e}.gate", read(f"{p}.mlp.gate.weight", None, None)
        yield f"{e}.e_score_correction_bias", read(f"{p}.mlp.gate.e_score_correction_bias", None, None)
        fm, n_exp = cfg.moe_intermediate_size, cfg.n_routed_experts
        if expert_tensor_parallel:
            experts, f_lo, f_hi = range(n_exp), rank * fm // n, (rank + 1) * fm // n
        else:
            experts, f_lo, f_hi = range(rank * n_exp // n, (rank + 1) * n_exp // n), 0, fm
        yield (
            f"{e}.experts.gate_up_proj",
            np.stack([fused_gate_up(f"{p}.mlp.experts.{x}", f_lo, f_hi) for x in experts]),
        )
        yield (
            f"{e}.experts.down_proj",
            np.stack(
                [read(f"{p}.mlp.experts.{x}.down_proj.weight", None, slice(f_lo, f_hi)) for x in experts]
            ),
        )
        if cfg.n_shared_experts:
            fs = cfg.n_shared_experts * fm // n
            yield (
                f"{e}.shared_experts.gate_up_proj",
                fused_gate_up(f"{p}.mlp.shared_experts", rank * fs, (rank + 1) * fs),
            )
            yield (
                f"{e}.shared_experts.down_proj",
                read(f"{p}.mlp.shared_experts.down_proj.weight", None, slice(rank * fs, (rank + 1) * fs)),
            )
    else:
        f = cfg.intermediate_size // n
        yield f"{e}.mlp.gate_up_proj", fused_gate_up(f"{p}.mlp", rank * f, (rank + 1) * f)
        yield (
            f"{e}.mlp.down_proj",
            read(f"{p}.mlp.down_proj.weight", None, slice(rank * f, (rank + 1) * f)),
        )

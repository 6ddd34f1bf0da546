"""The step model: the time one decode step takes on the busiest GPU (per-kernel roofline, collective
costs, fixed cost per kernel, pipeline) and the memory each GPU needs; ``predict_step`` and
``memory_per_gpu``. docs/planner.md writes the formulas down."""

from __future__ import annotations

import math

from .errors import PlannerError
from .hardware import Hardware
from .layouts import HELIX, KVP, Layout, check_layout
from .models import ModelSpec
from .precision import _ACT_BYTES, _STAT_BYTES, PRECISIONS, Precision

__all__ = ["memory_per_gpu", "predict_step"]


def _roofline(bytes_read: float, flops: float, hw: Hardware, precision: str) -> float:
    """One kernel: HBM traffic and math overlap, the slower one sets the time."""
    return max(bytes_read / hw.hbm_bandwidth, flops / hw.flops_at(precision))


def _all_reduce(nbytes: float, group: int, hw: Hardware) -> float:
    """Reduce-scatter + all-gather (bandwidth-optimal): 2 phases, each rank sends 2 (g-1)/g of the data."""
    if group <= 1:
        return 0.0
    bw, lat = hw.link(group)
    return 2 * lat + 2 * (group - 1) / group * nbytes / bw


def _all_to_all(nbytes_per_rank: float, group: int, hw: Hardware) -> float:
    """Each rank sends (g-1)/g of its ``nbytes_per_rank`` buffer, one phase."""
    if group <= 1:
        return 0.0
    bw, lat = hw.link(group)
    return lat + (group - 1) / group * nbytes_per_rank / bw


def _send(nbytes: float, hw: Hardware) -> float:
    """Point-to-point hop between pipeline stages (assumed inside the domain when it fits)."""
    return hw.link_latency + nbytes / hw.link_bandwidth


def _busiest_experts(model: ModelSpec, tokens: int, ep: int) -> float:
    """Routed experts the busiest EP rank reads for ``tokens`` tokens: the expected number of distinct
    experts hit under uniform routing, E = n (1 - (1 - k/n)^T), spread evenly over ep ranks, but at least
    one whole expert on some rank once any is hit, and at most the rank's own n/ep."""
    n, k = model.n_experts, model.top_k
    if tokens <= 0:
        return 0.0
    distinct = n * (1.0 - (1.0 - k / n) ** tokens)
    return min(n / ep, max(distinct / ep, 1.0))


def _kernels_per_layer(model: ModelSpec, layout: Layout, moe: bool) -> int:
    """Kernels on one layer's critical path, as in TensorRT-LLM's fused DeepSeek decode (its B200
    min-latency blog lists 13 modules per MoE layer). MLA attention: fused q_a+kv_a GEMM, q/kv RMSNorm,
    q_b GEMM, W_UK BMM, RoPE + cache append, attention, W_UV BMM, o_proj GEMM (8); GQA: qkv GEMM, RoPE +
    append, attention, o_proj (4). Then all-reduce + residual + RMSNorm (1). KV partials: exchange +
    merge (2). Dense FFN: gate_up, down, all-reduce + residual + RMSNorm (3). MoE: router GEMM, top-k,
    expert gate_up, expert down, finalize + all-reduce + residual + RMSNorm (5; the shared expert runs on
    a second stream), plus the token dispatch when EP follows DP attention (1)."""
    n = (8 if model.attention == "mla" else 4) + 1
    n += 2 if layout.kind in (KVP, HELIX) else 0
    if moe:
        n += 5 + (1 if layout.kind != HELIX and layout.ffn_ep > 1 else 0)
    else:
        n += 3
    return n


_KERNELS_PER_STEP = 4  # embedding gather, final RMSNorm, lm_head GEMM, sampling


def _layer_time(
    model: ModelSpec, hw: Hardware, layout: Layout, batch: int, context: int, prec: Precision, moe: bool
) -> dict[str, float]:
    """Seconds the busiest GPU spends on one layer for ``batch`` requests (one token each) that attend
    over ``context`` cached positions. Keys summed into the step (``_LAYER_SUM_KEYS``): attn_weights,
    attn_core (= max(kv_read, attn_math)), attn_comm, o_proj, ffn, ffn_comm, kernels (fixed cost)."""
    wb = PRECISIONS[prec.weights]
    kvb = PRECISIONS[prec.kv]
    f_w = prec.weights
    tp, kvp = layout.tp, layout.kvp
    helix = layout.kind == HELIX
    kappa = hw.kernel_overhead
    # Requests one attention group serves (DP attention splits them; the busiest gets the ceil).
    req = math.ceil(batch / layout.dp)
    heads = model.n_heads // tp
    kv_heads = max(1, model.n_kv_heads // tp)  # > 1 only for GQA with tp < K; tp > K duplicates
    ctx_local = math.ceil(context / kvp)
    n_kernels = _kernels_per_layer(model, layout, moe)

    # 1. q/kv projections: shared part whole on every rank, per-head part split over tp. Each KVP rank
    #    computes the full query of its heads (Helix: no query all-gather; kvp kind: replicated).
    w_attn = model.attn_shared_params + heads * model.attn_q_params_per_head
    w_attn += kv_heads * model.attn_kv_params_per_kv_head
    t_attn_w = _roofline(w_attn * wb, 2 * w_attn * req, hw, f_w)

    # 2. attention over the local KV shard: every rank reads its positions for its KV heads.
    kv_bytes = req * ctx_local * kv_heads * model.kv_values_per_kv_head * kvb
    attn_flops = req * ctx_local * heads * model.attn_flops_per_position_per_head
    t_kv = kv_bytes / hw.hbm_bandwidth
    t_math = attn_flops / hw.flops_at(prec.attention)
    t_core = max(t_kv, t_math)

    # 3. combine the KVP partials.
    part_bytes = req * heads * (model.exchange_dim_per_head * _ACT_BYTES + _STAT_BYTES)
    if helix:
        # One all-to-all over the KVP group along heads (FACTS §1: (cp-1)/cp * T * H_tp * (2R + 8)).
        t_comm = _all_to_all(part_bytes, kvp, hw)
        if layout.hopb and batch > 1:
            # HOP-B: request i's all-to-all overlaps request i+1's attention. Per-request pieces, each
            # paying its kernel's fixed cost: c = core/B + k, a = all-to-all of 1/B of the bytes + k;
            # exposed c + (B-1) max(c, a) + a replaces core + k + all-to-all + k.
            c = t_core / batch + kappa
            a = _all_to_all(part_bytes / batch, kvp, hw) + kappa
            overlapped = c + (batch - 1) * max(c, a) + a
            t_comm = overlapped - t_core - 2 * kappa
    elif kvp > 1:
        # Medha-style KVP: all-reduce of the (rescaled) partial outputs so every KVP group has them.
        t_comm = _all_reduce(part_bytes, kvp, hw)
    else:
        t_comm = 0.0

    # 4. o_proj: Helix at TP = kvp*tp over all attention GPUs; otherwise at TP = tp. Then all-reduce.
    o_group = kvp * tp if helix else tp
    o_tokens = batch if helix else req
    w_o = model.o_proj_params / o_group
    t_o = _roofline(w_o * wb, 2 * w_o * o_tokens, hw, f_w)
    t_o += _all_reduce(o_tokens * model.hidden * _ACT_BYTES, o_group, hw)

    # 5. FFN over TP = ffn_tp x EP = ffn_ep (baseline and kvp: the tp x dp GPUs of one KVP group).
    ftp, fep = layout.ffn_tp, layout.ffn_ep
    group = ftp * fep
    tokens = batch  # every FFN group sees the whole micro-batch (DP attention: after the EP dispatch)
    if not moe:
        w = model.dense_ffn_params / group
        t_ffn = _roofline(w * wb, 2 * w * tokens, hw, f_w)
    else:
        experts = _busiest_experts(model, tokens, fep)
        w = experts * model.expert_params / ftp
        w += model.n_shared_experts * model.expert_params / group  # shared expert: TP over the group
        w += model.router_params  # router: replicated
        flops_ffn = 2 * tokens * model.top_k * model.expert_params / group
        flops_ffn += 2 * tokens * (model.n_shared_experts * model.expert_params / group + model.router_params)
        t_ffn = _roofline(w * wb, flops_ffn, hw, f_w)
    act = tokens * model.hidden * _ACT_BYTES
    if helix or fep == 1:
        # Input is replicated on the group: each rank picks its experts' tokens; one all-reduce combines.
        t_ffn_comm = _all_reduce(act, group, hw)
    else:
        # DP attention + EP: dispatch and combine all-to-alls over EP (top_k copies of each token),
        # all-reduce over TP.
        t_ffn_comm = 2 * _all_to_all(act / fep * model.top_k, fep, hw) + _all_reduce(act / fep, ftp, hw)

    return {
        "attn_weights": t_attn_w,
        "kv_read": t_kv,
        "attn_math": t_math,
        "attn_core": t_core,
        "attn_comm": t_comm,
        "o_proj": t_o,
        "ffn": t_ffn,
        "ffn_comm": t_ffn_comm,
        "kernels": n_kernels * kappa,
    }


_LAYER_SUM_KEYS = ("attn_weights", "attn_core", "attn_comm", "o_proj", "ffn", "ffn_comm", "kernels")


def _stages(model: ModelSpec, pp: int) -> list[tuple[int, int]]:
    """(dense layers, MoE layers) per pipeline stage; contiguous, sizes differ by at most one."""
    base, extra = divmod(model.n_layers, pp)
    out, start = [], 0
    for s in range(pp):
        size = base + (1 if s < extra else 0)
        layers = range(start, start + size)
        dense = sum(1 for i in layers if i < model.n_dense_layers)
        out.append((dense, size - dense))
        start += size
    return out


def memory_per_gpu(
    model: ModelSpec, layout: Layout, batch: int, context: int, prec: Precision
) -> dict[str, float]:
    """Bytes of weights and KV cache on the fullest GPU (the first stage; it holds the dense layers)."""
    wb, kvb = PRECISIONS[prec.weights], PRECISIONS[prec.kv]
    tp, kvp = layout.tp, layout.kvp
    helix = layout.kind == HELIX
    stage_dense, stage_moe = max(_stages(model, layout.pp), key=lambda s: s[0] * 10**6 + s[1])
    n_layers = stage_dense + stage_moe
    heads = model.n_heads // tp
    kv_heads = max(1, model.n_kv_heads // tp)
    attn = (
        model.attn_shared_params
        + heads * model.attn_q_params_per_head
        + kv_heads * model.attn_kv_params_per_kv_head
    )
    attn += model.o_proj_params / (kvp * tp if helix else tp)
    group = layout.ffn_tp * layout.ffn_ep
    dense = model.dense_ffn_params / group
    moe = model.n_experts / layout.ffn_ep * model.expert_params / layout.ffn_tp
    moe += model.n_shared_experts * model.expert_params / group + model.router_params
    weights = (n_layers * attn + stage_dense * dense + stage_moe * moe) * wb
    # Embedding and lm_head, vocab-parallel over one stage's GPUs (first and last stage; count both).
    embed_group = layout.stage_gpus if helix else tp
    weights += (
        model.vocab
        * model.hidden
        * (1 if model.tied_embeddings else 2)
        / embed_group
        * PRECISIONS[prec.lm_head]
    )
    # KV: every one of the pp micro-batches keeps its cache on every stage, for that stage's layers.
    requests = layout.pp * math.ceil(batch / layout.dp)
    kv = requests * n_layers * math.ceil(context / kvp) * kv_heads * model.kv_values_per_kv_head * kvb
    return {"weights": weights, "kv": kv, "total": weights + kv}


def predict_step(
    model_cfg: ModelSpec,
    hw: Hardware,
    layout: Layout,
    batch: int,
    context: int,
    precision: Precision | str = "bf16",
) -> dict[str, float]:
    """Time components (seconds) of one decode step of a micro-batch of ``batch`` requests at ``context``
    cached tokens each. ``ttl`` is the token-to-token latency; ``tokens_per_s_gpu`` the throughput per GPU
    with ``pp`` micro-batches in flight; the other keys sum the per-layer components over all layers
    (attn_core, not kv_read/attn_math, is what counts in the total) plus ``lm_head`` and ``pp_send``."""
    if batch < 1:
        raise PlannerError(f"batch must be >= 1, got {batch}")
    if context < 1:
        raise PlannerError(f"context must be >= 1, got {context}")
    prec = Precision(weights=precision, kv=precision) if isinstance(precision, str) else precision
    check_layout(model_cfg, layout)
    dense_t = _layer_time(model_cfg, hw, layout, batch, context, prec, moe=False)
    moe_t = (
        _layer_time(model_cfg, hw, layout, batch, context, prec, moe=True) if model_cfg.is_moe else dense_t
    )
    stage_times = []
    for n_dense, n_moe in _stages(model_cfg, layout.pp):
        stage_times.append(sum(n_dense * dense_t[k] + n_moe * moe_t[k] for k in _LAYER_SUM_KEYS))
    out = {k: model_cfg.n_dense_layers * dense_t[k] + model_cfg.n_moe_layers * moe_t[k] for k in dense_t}
    # lm_head: vocab-parallel over the last stage (Helix: all its GPUs; baseline: the TP group).
    g = layout.stage_gpus if layout.kind == HELIX else layout.tp
    w = model_cfg.lm_head_params / g
    tokens = batch if layout.kind == HELIX else math.ceil(batch / layout.dp)
    t_head = _roofline(w * PRECISIONS[prec.lm_head], 2 * w * tokens, hw, prec.lm_head)
    t_head += hw.link(g)[1] if g > 1 else 0.0  # gather of the per-shard argmax/top-k: latency only
    t_head += _KERNELS_PER_STEP * hw.kernel_overhead
    out["lm_head"] = t_head
    # Pipeline: one hop per stage boundary and one back to the first stage with the sampled token.
    hop = _send(batch * model_cfg.hidden * _ACT_BYTES, hw) if layout.pp > 1 else 0.0
    out["pp_send"] = layout.pp * hop
    # A synchronous pipeline advances every micro-batch one stage per round; the slowest stage sets it.
    round_time = max(stage_times[:-1] + [stage_times[-1] + t_head]) + hop
    out["ttl"] = layout.pp * round_time if layout.pp > 1 else stage_times[0] + t_head
    out["tokens_per_s_user"] = 1.0 / out["ttl"]
    out["users"] = float(layout.pp * batch)
    out["tokens_per_s_gpu"] = out["users"] / (out["ttl"] * layout.gpus)
    mem = memory_per_gpu(model_cfg, layout, batch, context, prec)
    out["memory_weights"] = mem["weights"]
    out["memory_kv"] = mem["kv"]
    out["fits"] = float(mem["total"] <= hw.hbm_capacity * hw.usable_memory)
    return out

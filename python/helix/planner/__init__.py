"""Roofline planner for decode: which layout of N GPUs gives what token-to-token latency and throughput.

Pure Python (imports nothing compiled). The model is written down in docs/planner.md; in short, for every
layer of one decode step the busiest GPU spends

    max(bytes it reads from HBM / HBM bandwidth, FLOPs it does / FLOP/s)      (per kernel: memory and
                                                                              compute overlap)
    + latency + bytes it sends / link bandwidth                               (per collective: serial)

and the step time (token-to-token latency, TTL) is the sum over layers (plus pipeline hops and lm_head).
tokens/s/user = 1 / TTL, tokens/s/GPU = concurrent users / (TTL * GPUs).

Two families of layouts are enumerated on N GPUs (N / n data-parallel replicas of n GPUs each):

- baseline (no re-provisioning between attention and FFN): PP x DP x KVP x TP. Attention shards heads
  over TP (duplicating the KV cache once TP exceeds the KV heads: all of it for MLA, which has one latent
  head), the sequence over KVP (Medha-style KV parallelism, FFN not widened), requests over DP (the
  DeepSeek "DP attention" that feeds an EP MoE); the FFN runs TP=TP x EP=DP.
- helix: PP x KVP x TPA with TPA <= KV heads for attention, then the same KVP*TPA GPUs run o_proj at
  TP=KVP*TPA and the FFN at TP x EP = KVP*TPA; one all-to-all per layer (optionally HOP-B overlapped).

Entry points: ``plan(...)`` (everything the CLI prints), ``predict_step(model, hw, layout, batch,
context)`` (time components of one layout; the custom-hardware path compares it with a measured step),
``main(argv)`` (``python -m helix plan``).
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "PRECISIONS",
    "HARDWARE_PRESETS",
    "MODEL_PRESETS",
    "PlannerError",
    "ModelSpec",
    "Hardware",
    "Layout",
    "Point",
    "PlanResult",
    "get_model",
    "get_hardware",
    "custom_hardware",
    "model_from_config",
    "parse_layout",
    "enumerate_layouts",
    "predict_step",
    "max_batch",
    "pareto_frontier",
    "plan",
    "main",
]


class PlannerError(ValueError):
    """A bad planner input (unknown preset, layout that does not fit the model or the GPU count...)."""


# Bytes per stored value. fp4 is NVFP4: 4-bit E2M1 values plus one FP8 (E4M3) scale per 16 values, i.e.
# 4.5 bits (NVIDIA, "Introducing NVFP4 for efficient and accurate low-precision inference", 2025). fp8's
# block scales (one fp32 per 128x128 block in DeepSeek's checkpoints, FACTS §3) add 0.02% and are ignored.
PRECISIONS: dict[str, float] = {"bf16": 2.0, "fp8": 1.0, "fp4": 0.5625}

# Activations exchanged between GPUs are bf16; softmax statistics (max and sum, or one LSE) fp32.
_ACT_BYTES = 2.0
_STAT_BYTES = 8.0


# --------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    """What decode needs to know of a model. ``attention`` is "mla" (DeepSeek) or "gqa" (Llama)."""

    name: str
    attention: str
    hidden: int
    n_layers: int
    n_heads: int
    n_kv_heads: int  # GQA: KV heads; MLA: 1 (one latent shared by all heads)
    vocab: int
    dense_intermediate: int
    n_dense_layers: int  # the first n_dense_layers are dense, the rest MoE (== n_layers for dense models)
    head_dim: int = 0  # GQA only
    q_lora_rank: int = 0  # MLA; 0 = plain q_proj
    kv_lora_rank: int = 0
    qk_nope_dim: int = 0
    qk_rope_dim: int = 0
    v_head_dim: int = 0
    moe_intermediate: int = 0
    n_experts: int = 0
    top_k: int = 0
    n_shared_experts: int = 0
    tied_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.attention not in ("mla", "gqa"):
            raise PlannerError(f"model {self.name}: attention must be 'mla' or 'gqa', got {self.attention!r}")
        for key in ("hidden", "n_layers", "n_heads", "n_kv_heads", "vocab"):
            if getattr(self, key) <= 0:
                raise PlannerError(f"model {self.name}: {key} must be positive, got {getattr(self, key)}")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            raise PlannerError(f"model {self.name}: n_dense_layers must be in [0, n_layers]")
        if self.n_heads % self.n_kv_heads:
            raise PlannerError(
                f"model {self.name}: n_heads ({self.n_heads}) is not divisible by "
                f"n_kv_heads ({self.n_kv_heads})"
            )
        if self.attention == "mla":
            if self.n_kv_heads != 1:
                raise PlannerError(f"model {self.name}: MLA has one latent KV head (n_kv_heads=1)")
            for key in ("kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim"):
                if getattr(self, key) <= 0:
                    raise PlannerError(f"model {self.name}: MLA needs {key} > 0")
        elif self.head_dim <= 0:
            raise PlannerError(f"model {self.name}: GQA needs head_dim > 0")
        if self.n_dense_layers < self.n_layers:
            for key in ("moe_intermediate", "n_experts", "top_k"):
                if getattr(self, key) <= 0:
                    raise PlannerError(f"model {self.name}: MoE layers need {key} > 0")
            if self.top_k > self.n_experts:
                raise PlannerError(f"model {self.name}: top_k ({self.top_k}) > n_experts ({self.n_experts})")
        if self.n_dense_layers > 0 and self.dense_intermediate <= 0:
            raise PlannerError(f"model {self.name}: dense layers need dense_intermediate > 0")

    # --- derived sizes (parameter counts, values per token) ---------------------------------------------

    @property
    def is_moe(self) -> bool:
        return self.n_dense_layers < self.n_layers

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers

    @property
    def attn_shared_params(self) -> int:
        """Attention input projections every attention rank holds whole (MLA: q_a, kv_a; GQA: none)."""
        if self.attention == "mla":
            q_a = self.hidden * self.q_lora_rank if self.q_lora_rank else 0
            return q_a + self.hidden * (self.kv_lora_rank + self.qk_rope_dim)
        return 0

    @property
    def attn_q_params_per_head(self) -> int:
        """Per query head: the query projection (and, for MLA, W_UK and W_UV of kv_b)."""
        if self.attention == "mla":
            q_in = self.q_lora_rank or self.hidden
            q = q_in * (self.qk_nope_dim + self.qk_rope_dim)
            kv_b = self.kv_lora_rank * (self.qk_nope_dim + self.v_head_dim)
            return q + kv_b
        return self.hidden * self.head_dim

    @property
    def attn_kv_params_per_kv_head(self) -> int:
        """GQA: k_proj + v_proj per KV head. MLA: 0 (the latent projection is in attn_shared_params)."""
        return 2 * self.hidden * self.head_dim if self.attention == "gqa" else 0

    @property
    def o_dim_per_head(self) -> int:
        return self.v_head_dim if self.attention == "mla" else self.head_dim

    @property
    def o_proj_params(self) -> int:
        return self.n_heads * self.o_dim_per_head * self.hidden

    @property
    def kv_values_per_kv_head(self) -> int:
        """Cached values per token per layer per KV head (MLA: the latent c_kv plus the shared k_pe)."""
        if self.attention == "mla":
            return self.kv_lora_rank + self.qk_rope_dim
        return 2 * self.head_dim

    @property
    def attn_flops_per_position_per_head(self) -> int:
        """Score plus weighted sum, per cached position per query head (MLA absorbed: dot over R+P, sum
        over R; GQA: dot and sum over head_dim)."""
        if self.attention == "mla":
            return 2 * (self.kv_lora_rank + self.qk_rope_dim) + 2 * self.kv_lora_rank
        return 4 * self.head_dim

    @property
    def exchange_dim_per_head(self) -> int:
        """Width of one head's partial output in the Helix all-to-all: the latent R for MLA (the
        reference implementation exchanges before W_UV, FACTS §1), head_dim for GQA."""
        return self.kv_lora_rank if self.attention == "mla" else self.head_dim

    @property
    def dense_ffn_params(self) -> int:
        return 3 * self.hidden * self.dense_intermediate

    @property
    def expert_params(self) -> int:
        return 3 * self.hidden * self.moe_intermediate

    @property
    def router_params(self) -> int:
        return self.hidden * self.n_experts

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    def total_params(self) -> int:
        attn = (
            self.attn_shared_params
            + self.n_heads * self.attn_q_params_per_head
            + self.n_kv_heads * self.attn_kv_params_per_kv_head
            + self.o_proj_params
        )
        moe = (
            self.n_experts * self.expert_params
            + self.n_shared_experts * self.expert_params
            + self.router_params
        )
        embed = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return (
            self.n_layers * attn
            + self.n_dense_layers * self.dense_ffn_params
            + self.n_moe_layers * moe
            + embed
        )


# DeepSeek-V3 dims: FACTS §3 (the model's config.json). R1 has V3's architecture.
_DEEPSEEK_V3 = dict(
    attention="mla",
    hidden=7168,
    n_layers=61,
    n_heads=128,
    n_kv_heads=1,
    vocab=129280,
    dense_intermediate=18432,
    n_dense_layers=3,
    q_lora_rank=1536,
    kv_lora_rank=512,
    qk_nope_dim=128,
    qk_rope_dim=64,
    v_head_dim=128,
    moe_intermediate=2048,
    n_experts=256,
    top_k=8,
    n_shared_experts=1,
)

MODEL_PRESETS: dict[str, ModelSpec] = {
    "deepseek-v3": ModelSpec(name="deepseek-v3", **_DEEPSEEK_V3),
    "deepseek-r1": ModelSpec(name="deepseek-r1", **_DEEPSEEK_V3),
    # Llama 3.1 405B config.json: hidden 16384, 126 layers, 128 q heads / 8 KV heads of 128, FFN 53248,
    # vocab 128256, untied embeddings.
    "llama-405b": ModelSpec(
        name="llama-405b",
        attention="gqa",
        hidden=16384,
        n_layers=126,
        n_heads=128,
        n_kv_heads=8,
        head_dim=128,
        vocab=128256,
        dense_intermediate=53248,
        n_dense_layers=126,
    ),
}


def model_from_config(cfg: dict[str, Any], name: str = "config") -> ModelSpec:
    """Adapter from a Hugging Face config.json dict (DeepSeek-V2/V3 MLA, or a Llama-like GQA model)."""

    def need(key: str) -> Any:
        if key not in cfg:
            raise PlannerError(f"{name}: config.json has no {key!r}")
        return cfg[key]

    hidden = int(need("hidden_size"))
    n_layers = int(need("num_hidden_layers"))
    n_heads = int(need("num_attention_heads"))
    vocab = int(need("vocab_size"))
    tied = bool(cfg.get("tie_word_embeddings", False))
    if "kv_lora_rank" in cfg and cfg.get("kv_lora_rank"):
        n_experts = int(cfg.get("n_routed_experts") or 0)
        # moe_layer_freq is 1 in every released DeepSeek-V3 config; other values are not modelled.
        if n_experts and int(cfg.get("moe_layer_freq", 1)) != 1:
            raise PlannerError(f"{name}: moe_layer_freq != 1 is not supported")
        return ModelSpec(
            name=name,
            attention="mla",
            hidden=hidden,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=1,
            vocab=vocab,
            dense_intermediate=int(cfg.get("intermediate_size", 0)),
            n_dense_layers=min(n_layers, int(cfg.get("first_k_dense_replace", 0))) if n_experts else n_layers,
            q_lora_rank=int(cfg.get("q_lora_rank") or 0),
            kv_lora_rank=int(need("kv_lora_rank")),
            qk_nope_dim=int(need("qk_nope_head_dim")),
            qk_rope_dim=int(need("qk_rope_head_dim")),
            v_head_dim=int(need("v_head_dim")),
            moe_intermediate=int(cfg.get("moe_intermediate_size", 0)),
            n_experts=n_experts,
            top_k=int(cfg.get("num_experts_per_tok") or 0),
            n_shared_experts=int(cfg.get("n_shared_experts") or 0),
            tied_embeddings=tied,
        )
    n_kv = int(cfg.get("num_key_value_heads") or n_heads)
    head_dim = int(cfg.get("head_dim") or hidden // n_heads)
    return ModelSpec(
        name=name,
        attention="gqa",
        hidden=hidden,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        vocab=vocab,
        dense_intermediate=int(need("intermediate_size")),
        n_dense_layers=n_layers,
        tied_embeddings=tied,
    )


def _unknown(kind: str, value: str, known: Iterable[str]) -> PlannerError:
    known = sorted(known)
    close = difflib.get_close_matches(value.lower(), known, n=1, cutoff=0.4)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return PlannerError(f"unknown {kind} {value!r}{hint} (known: {', '.join(known)})")


def get_model(name_or_path: str) -> ModelSpec:
    """A preset name, or the path of a config.json (or of a folder holding one)."""
    key = name_or_path.lower()
    if key in MODEL_PRESETS:
        return MODEL_PRESETS[key]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise PlannerError(f"model config {str(path)!r} does not exist")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise PlannerError(f"model config {str(path)!r} is not valid JSON: {exc}") from exc
        return model_from_config(cfg, name=path.parent.name or path.stem)
    raise _unknown("model", name_or_path, MODEL_PRESETS)


# ------------------------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    """Per-GPU figures. Bandwidths in bytes/s, FLOP/s dense (no sparsity), latencies in seconds.

    ``link_bandwidth`` is one direction of one GPU's scale-up link (what a GPU can send while it
    receives as much); ``link_latency`` is charged once per phase of a collective (an all-to-all or a
    one-shot reduce has one phase, an all-reduce two). Groups that do not fit in one scale-up domain of
    ``domain_size`` GPUs use the scale-out figures instead. ``kernel_overhead`` is the fixed time every
    kernel on the critical path costs beyond its roofline time (launch gap inside a CUDA graph, DRAM
    latency, ramp-up and tail of a small kernel); docs/planner.md gives its source and its effect.
    """

    name: str
    hbm_bandwidth: float
    hbm_capacity: float
    flops: dict[str, float]
    link_bandwidth: float
    link_latency: float
    domain_size: int
    scaleout_bandwidth: float
    scaleout_latency: float
    kernel_overhead: float = 0.0
    usable_memory: float = 0.9  # share of HBM for weights + KV; the rest: activations, workspaces, runtime
    source: str = ""

    def __post_init__(self) -> None:
        for key in ("hbm_bandwidth", "hbm_capacity", "link_bandwidth", "scaleout_bandwidth"):
            if not getattr(self, key) > 0:
                raise PlannerError(f"hardware {self.name}: {key} must be positive, got {getattr(self, key)}")
        for key in ("link_latency", "scaleout_latency", "kernel_overhead"):
            if getattr(self, key) < 0:
                raise PlannerError(f"hardware {self.name}: {key} must be >= 0")
        if self.domain_size < 1:
            raise PlannerError(f"hardware {self.name}: domain_size must be >= 1")
        if not 0 < self.usable_memory <= 1:
            raise PlannerError(f"hardware {self.name}: usable_memory must be in (0, 1]")
        missing = [p for p in PRECISIONS if not self.flops.get(p, 0) > 0]
        if missing:
            raise PlannerError(f"hardware {self.name}: no positive FLOP/s for {', '.join(missing)}")

    def flops_at(self, precision: str) -> float:
        return self.flops[precision]

    def link(self, group: int) -> tuple[float, float]:
        """(bandwidth, latency) for a collective over ``group`` GPUs."""
        if group <= self.domain_size:
            return self.link_bandwidth, self.link_latency
        return self.scaleout_bandwidth, self.scaleout_latency


_T = 1e12
_G = 1e9
_US = 1e-6
_KERNEL_OVERHEAD = 3.0 * _US

HARDWARE_PRESETS: dict[str, Hardware] = {
    # NVIDIA H100 SXM5 datasheet: 3.35 TB/s HBM3, 80 GB, 989 TFLOP/s BF16 and 1979 FP8 dense (the sheet's
    # 1979/3958 are "with sparsity"); NVLink 4: 900 GB/s bidirectional = 450 GB/s per direction, 8-GPU
    # HGX domain. Hopper has no FP4 tensor cores: fp4 weights are dequantized and multiplied at the FP8
    # rate. Scale-out: one ConnectX-7 400 Gb/s NIC per GPU = 50 GB/s.
    "h100": Hardware(
        name="h100",
        hbm_bandwidth=3.35 * _T,
        hbm_capacity=80 * _G,
        flops={"bf16": 989 * _T, "fp8": 1979 * _T, "fp4": 1979 * _T},
        link_bandwidth=450 * _G,
        link_latency=1.0 * _US,
        domain_size=8,
        scaleout_bandwidth=50 * _G,
        scaleout_latency=5.0 * _US,
        kernel_overhead=_KERNEL_OVERHEAD,
        source="NVIDIA H100 datasheet (SXM5); NVLink 4; ConnectX-7",
    ),
    # NVIDIA H200 SXM datasheet: 4.8 TB/s HBM3e, 141 GB; compute and NVLink as H100.
    "h200": Hardware(
        name="h200",
        hbm_bandwidth=4.8 * _T,
        hbm_capacity=141 * _G,
        flops={"bf16": 989 * _T, "fp8": 1979 * _T, "fp4": 1979 * _T},
        link_bandwidth=450 * _G,
        link_latency=1.0 * _US,
        domain_size=8,
        scaleout_bandwidth=50 * _G,
        scaleout_latency=5.0 * _US,
        kernel_overhead=_KERNEL_OVERHEAD,
        source="NVIDIA H200 datasheet (SXM); NVLink 4; ConnectX-7",
    ),
    # NVIDIA HGX B200 datasheet (per GPU): 8 TB/s HBM3e, 180 GB; dense 2.25 PFLOP/s BF16, 4.5 FP8, 9 FP4
    # (half the sparse figures); NVLink 5: 1.8 TB/s bidirectional = 900 GB/s per direction; 8-GPU domain.
    "b200": Hardware(
        name="b200",
        hbm_bandwidth=8.0 * _T,
        hbm_capacity=180 * _G,
        flops={"bf16": 2250 * _T, "fp8": 4500 * _T, "fp4": 9000 * _T},
        link_bandwidth=900 * _G,
        link_latency=1.0 * _US,
        domain_size=8,
        scaleout_bandwidth=50 * _G,
        scaleout_latency=5.0 * _US,
        kernel_overhead=_KERNEL_OVERHEAD,
        source="NVIDIA HGX B200 datasheet; NVLink 5; ConnectX-7",
    ),
    # NVIDIA GB200 NVL72 datasheet, rack totals / 72 GPUs: 576 TB/s HBM3e -> 8 TB/s; 13.4 TB -> 186 GB;
    # 1440 / 720 / 360 PFLOP/s FP4 / FP8 / BF16 "with sparsity" -> dense 10 / 5 / 2.5 PFLOP/s per GPU;
    # NVLink 130 TB/s -> 1.8 TB/s bidirectional = 900 GB/s per direction, one 72-GPU NVLink domain.
    "gb200-nvl72": Hardware(
        name="gb200-nvl72",
        hbm_bandwidth=8.0 * _T,
        hbm_capacity=186 * _G,
        flops={"bf16": 2500 * _T, "fp8": 5000 * _T, "fp4": 10000 * _T},
        link_bandwidth=900 * _G,
        link_latency=1.0 * _US,
        domain_size=72,
        scaleout_bandwidth=50 * _G,
        scaleout_latency=5.0 * _US,
        kernel_overhead=_KERNEL_OVERHEAD,
        source="NVIDIA GB200 NVL72 datasheet (rack totals / 72); NVLink 5 switch",
    ),
}
# NVLink latency (all presets): about 1 us per switch traversal + synchronisation for a one-shot
# collective over NVSwitch (NVLink hop latency is quoted at 1-2 us for NVLink 4; TensorRT-LLM's one-shot
# and multi-shot all-reduce use a single NVSwitch phase). Scale-out: 5 us (InfiniBand/RoCE, 1-5 us
# per message plus software). Both are assumptions; docs/planner.md shows how the result moves with them.

_HW_ALIASES = {"gb200": "gb200-nvl72", "nvl72": "gb200-nvl72", "gb200nvl72": "gb200-nvl72"}


def get_hardware(name: str) -> Hardware:
    key = name.lower().replace("_", "-")
    key = _HW_ALIASES.get(key, key)
    if key in HARDWARE_PRESETS:
        return HARDWARE_PRESETS[key]
    raise _unknown("hardware", name, HARDWARE_PRESETS)


def custom_hardware(
    bandwidth_gbs: float,
    tflops: float,
    link_bandwidth_gbs: float,
    link_latency_us: float,
    *,
    capacity_gb: float = 1e6,
    domain_size: int = 1 << 20,
    name: str = "custom",
    flops_per_precision: dict[str, float] | None = None,
    kernel_overhead_us: float = 0.0,
) -> Hardware:
    """Hardware given by hand: HBM (or DRAM) GB/s, TFLOP/s (the same for every precision unless
    ``flops_per_precision`` in TFLOP/s says otherwise), link GB/s per direction and latency in us.
    Capacity defaults to unlimited, every group to one domain (no scale-out tier), the fixed cost per
    kernel to 0 (pure roofline)."""
    if not bandwidth_gbs > 0:
        raise PlannerError(f"custom hardware: --bandwidth must be positive, got {bandwidth_gbs}")
    if not link_bandwidth_gbs > 0:
        raise PlannerError(f"custom hardware: --link-bandwidth must be positive, got {link_bandwidth_gbs}")
    if not tflops > 0:
        raise PlannerError(f"custom hardware: --flops must be positive, got {tflops}")
    flops = {p: tflops * _T for p in PRECISIONS}
    for p, v in (flops_per_precision or {}).items():
        if p not in PRECISIONS:
            raise _unknown("precision", p, PRECISIONS)
        flops[p] = v * _T
    return Hardware(
        name=name,
        hbm_bandwidth=bandwidth_gbs * _G,
        hbm_capacity=capacity_gb * _G,
        flops=flops,
        link_bandwidth=link_bandwidth_gbs * _G,
        link_latency=link_latency_us * _US,
        domain_size=domain_size,
        scaleout_bandwidth=link_bandwidth_gbs * _G,
        scaleout_latency=link_latency_us * _US,
        kernel_overhead=kernel_overhead_us * _US,
        usable_memory=1.0,
        source="given by hand",
    )


# -------------------------------------------------------------------------------------------- layouts

BASELINE = "baseline"  # conventional: TP (duplicating KV beyond the KV heads), attention DP + EP, PP
KVP = "kvp"  # Medha-style KV parallelism without re-provisioning the FFN (reported, not in the headline)
HELIX = "helix"
HELIX_HOPB = "helix+hopb"
FAMILIES = (BASELINE, KVP, HELIX, HELIX_HOPB)
_KINDS = (BASELINE, KVP, HELIX)


@dataclass(frozen=True)
class Layout:
    """One way to run a replica of ``gpus`` GPUs (``kind`` is baseline, kvp or helix).

    baseline: gpus = pp * dp * tp. Attention: heads over tp (the KV cache is duplicated once tp exceeds
              the KV heads; all of it for MLA), requests over dp. FFN: TP = tp, EP = dp (dp > 1: MoE).
    kvp:      gpus = pp * dp * kvp * tp; as baseline, plus the sequence sharded over kvp for attention
              (partials merged by an all-reduce); the FFN is not widened: it runs at TP = tp, EP = dp and
              the kvp groups repeat it.
    helix:    gpus = pp * kvp * tp with tp (= TPA) <= KV heads. o_proj at TP = kvp*tp; FFN at
              TP = ffn_tp, EP = ffn_ep with ffn_tp * ffn_ep = kvp * tp. ``hopb`` overlaps the all-to-all.
    """

    kind: str
    pp: int = 1
    dp: int = 1
    kvp: int = 1
    tp: int = 1
    ffn_tp: int = 1
    ffn_ep: int = 1
    hopb: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise _unknown("layout kind", self.kind, _KINDS)
        for key in ("pp", "dp", "kvp", "tp", "ffn_tp", "ffn_ep"):
            if getattr(self, key) < 1:
                raise PlannerError(f"layout: {key} must be >= 1, got {getattr(self, key)}")
        if self.hopb and self.kind != HELIX:
            raise PlannerError("layout: HOP-B overlaps the Helix all-to-all; only helix layouts have it")
        if self.kind == BASELINE and self.kvp != 1:
            raise PlannerError("layout: a baseline has kvp = 1 (sequence sharding is the 'kvp' kind)")
        if self.kind in (KVP, HELIX) and self.kvp < 2:
            raise PlannerError(f"layout: {self.kind} needs kvp >= 2 (kvp = 1 is a baseline)")
        if self.kind in (BASELINE, KVP):
            if (self.ffn_tp, self.ffn_ep) != (self.tp, self.dp):
                raise PlannerError(f"layout: a {self.kind} layout runs its FFN at TP = tp, EP = dp")
        else:
            if self.dp != 1:
                raise PlannerError("layout: helix has no DP inside a replica (use more replicas)")
            if self.ffn_tp * self.ffn_ep != self.kvp * self.tp:
                raise PlannerError(
                    f"layout: helix re-provisions the kvp*tp = {self.kvp * self.tp} attention GPUs for the "
                    f"FFN, but ffn_tp*ffn_ep = {self.ffn_tp * self.ffn_ep}"
                )

    @property
    def stage_gpus(self) -> int:
        """GPUs of one pipeline stage."""
        return self.dp * self.kvp * self.tp

    @property
    def gpus(self) -> int:
        return self.pp * self.stage_gpus

    @property
    def family(self) -> str:
        return HELIX_HOPB if self.hopb else self.kind

    @property
    def label(self) -> str:
        parts = [f"pp{self.pp}"] if self.pp > 1 else []
        if self.kind == HELIX:
            parts += [f"kvp{self.kvp}", f"tpa{self.tp}", f"ffn-tp{self.ffn_tp}"]
            parts += [f"ep{self.ffn_ep}"] if self.ffn_ep > 1 else []
        else:
            parts += [f"dp{self.dp}"] if self.dp > 1 else []
            parts += [f"kvp{self.kvp}"] if self.kvp > 1 else []
            parts += [f"tp{self.tp}"]
        return f"{self.family}:" + "-".join(parts)


def parse_layout(text: str) -> Layout:
    """``"helix:kvp=16,tp=4,ffn_tp=8,ffn_ep=8,hopb=1"``, ``"baseline:tp=8,dp=8"`` or ``"kvp:kvp=8,tp=8"``."""
    kind, _, rest = text.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip().replace("-", "_")
        key = "tp" if key == "tpa" else "ffn_ep" if key == "ep" else key
        if not eq or key not in Layout.__dataclass_fields__ or key == "kind":
            raise PlannerError(
                f"layout {text!r}: cannot read {item!r} (keys: pp, dp, kvp, tp|tpa, ffn_tp, ffn_ep|ep, hopb)"
            )
        try:
            kwargs[key] = value.strip().lower() in ("1", "true", "yes") if key == "hopb" else int(value)
        except ValueError as exc:
            raise PlannerError(f"layout {text!r}: {key} must be an integer") from exc
    kind = kind.strip().lower()
    if kind in (BASELINE, "base", KVP):
        kwargs.setdefault("ffn_tp", kwargs.get("tp", 1))
        kwargs.setdefault("ffn_ep", kwargs.get("dp", 1))
        return Layout(kind=KVP if kind == KVP else BASELINE, **kwargs)
    if kind in (HELIX, HELIX_HOPB):
        if kind == HELIX_HOPB:
            kwargs["hopb"] = True
        n = kwargs.get("kvp", 1) * kwargs.get("tp", 1)
        if "ffn_tp" not in kwargs:
            kwargs["ffn_tp"] = max(1, n // kwargs.get("ffn_ep", 1))
        kwargs.setdefault("ffn_ep", max(1, n // kwargs["ffn_tp"]))
        return Layout(kind=HELIX, **kwargs)
    raise _unknown("layout kind", kind, (BASELINE, KVP, HELIX, HELIX_HOPB))


def check_layout(model: ModelSpec, layout: Layout) -> None:
    """Raise PlannerError if ``layout`` cannot shard ``model``."""
    if model.n_heads % layout.tp:
        raise PlannerError(
            f"layout {layout.label}: {model.n_heads} attention heads are not divisible by tp={layout.tp}"
        )
    if layout.kind == HELIX:
        if layout.tp > model.n_kv_heads:
            raise PlannerError(
                f"layout {layout.label}: helix keeps TPA <= KV heads ({model.n_kv_heads} for {model.name}; "
                f"MLA has one latent head), got tp={layout.tp}"
            )
        if model.n_heads % (layout.kvp * layout.tp):
            raise PlannerError(
                f"layout {layout.label}: the all-to-all splits {model.n_heads} heads over kvp*tpa="
                f"{layout.kvp * layout.tp} GPUs; not divisible"
            )
    if layout.pp > model.n_layers:
        raise PlannerError(f"layout {layout.label}: pp={layout.pp} exceeds {model.n_layers} layers")
    ep = layout.ffn_ep
    if ep > 1:
        if not model.is_moe:
            raise PlannerError(
                f"layout {layout.label}: EP = {ep} (dp > 1 inside a replica) needs a MoE model; "
                f"{model.name} is dense"
            )
        if model.n_experts % ep:
            raise PlannerError(f"layout {layout.label}: {model.n_experts} experts not divisible by EP={ep}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_layouts(model: ModelSpec, gpus: int, families: Sequence[str] = FAMILIES) -> list[Layout]:
    """Every valid layout of a replica whose GPU count divides ``gpus`` (the rest are DP replicas)."""
    if gpus < 1:
        raise PlannerError(f"--gpus must be >= 1, got {gpus}")
    out: list[Layout] = []
    for n in _divisors(gpus):
        for pp in _divisors(n):
            if pp > model.n_layers:
                continue
            stage = n // pp
            for tp in _divisors(stage):
                for dp in _divisors(stage // tp):
                    kvp = stage // (tp * dp)
                    kind = BASELINE if kvp == 1 else KVP
                    if kind in families:
                        cand = Layout(kind, pp=pp, dp=dp, kvp=kvp, tp=tp, ffn_tp=tp, ffn_ep=dp)
                        if _valid(model, cand):
                            out.append(cand)
                kvp = stage // tp
                if kvp < 2:
                    continue
                for ep in _divisors(stage):
                    for hopb in (False, True):
                        if (HELIX_HOPB if hopb else HELIX) not in families:
                            continue
                        cand = Layout(HELIX, pp=pp, kvp=kvp, tp=tp, ffn_tp=stage // ep, ffn_ep=ep, hopb=hopb)
                        if _valid(model, cand):
                            out.append(cand)
    return out


def _valid(model: ModelSpec, layout: Layout) -> bool:
    try:
        check_layout(model, layout)
    except PlannerError:
        return False
    return True


# ---------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Precision:
    weights: str = "bf16"
    kv: str = "bf16"
    attn_math: str = ""  # tensor-core precision of the attention matmuls; "" = the KV precision
    lm_head: str = "bf16"  # quantized checkpoints keep lm_head in bf16 (FACTS §3)

    def __post_init__(self) -> None:
        for key in ("weights", "kv", "lm_head"):
            if getattr(self, key) not in PRECISIONS:
                raise _unknown("precision", getattr(self, key), PRECISIONS)
        if self.attn_math and self.attn_math not in PRECISIONS:
            raise _unknown("precision", self.attn_math, PRECISIONS)

    @property
    def attention(self) -> str:
        return self.attn_math or self.kv


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


# ------------------------------------------------------------------------------------------ frontier


@dataclass(frozen=True)
class Point:
    family: str
    layout: str
    gpus_per_replica: int
    replicas: int
    batch: int  # micro-batch per replica (per pipeline round)
    users: int  # concurrent requests on all GPUs: replicas * pp * batch
    ttl_ms: float
    tokens_per_s_user: float
    tokens_per_s_gpu: float


def pareto_frontier(points: Iterable[Point]) -> list[Point]:
    """Points not beaten on both tokens/s/user and tokens/s/GPU, by decreasing tokens/s/user."""
    ordered = sorted(points, key=lambda p: (-p.tokens_per_s_user, -p.tokens_per_s_gpu))
    out: list[Point] = []
    best_gpu = -math.inf
    for p in ordered:
        if p.tokens_per_s_gpu > best_gpu:
            out.append(p)
            best_gpu = p.tokens_per_s_gpu
    return out


def max_batch(
    model: ModelSpec,
    hw: Hardware,
    layout: Layout,
    context: int,
    prec: Precision,
    ttl_limit: float = math.inf,
    cap: int = 1 << 20,
) -> int:
    """Largest micro-batch that fits in memory and keeps TTL <= ttl_limit (0 if not even one does).
    TTL and memory grow with the batch, so a bisection finds it."""

    def ok(b: int) -> bool:
        s = predict_step(model, hw, layout, b, context, prec)
        return bool(s["fits"]) and s["ttl"] <= ttl_limit

    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= cap and ok(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@dataclass
class PlanResult:
    model: str
    hardware: str
    precision: dict[str, str]
    context: int
    gpus: int
    batches: list[int]
    n_layouts: dict[str, int]
    frontiers: dict[str, list[Point]]
    interactivity_gain: float
    batch_gain: float
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["frontiers"] = {k: [asdict(p) for p in v] for k, v in self.frontiers.items()}
        return out


DEFAULT_BATCHES = [2**i for i in range(0, 13)]


def _point(
    model: ModelSpec, hw: Hardware, layout: Layout, b: int, ctx: int, prec: Precision, gpus: int
) -> Point | None:
    s = predict_step(model, hw, layout, b, ctx, prec)
    if not s["fits"]:
        return None
    replicas = gpus // layout.gpus
    return Point(
        family=layout.family,
        layout=layout.label,
        gpus_per_replica=layout.gpus,
        replicas=replicas,
        batch=b,
        users=replicas * layout.pp * b,
        ttl_ms=s["ttl"] * 1e3,
        tokens_per_s_user=s["tokens_per_s_user"],
        tokens_per_s_gpu=s["tokens_per_s_gpu"],
    )


def plan(
    model: ModelSpec,
    hw: Hardware,
    prec: Precision,
    context: int,
    gpus: int,
    batches: Sequence[int] = DEFAULT_BATCHES,
) -> PlanResult:
    """Sweep every layout x batch, keep what fits in memory, return each family's Pareto frontier and the
    two headline ratios (definitions in docs/planner.md):

    interactivity_gain = best TTL of any baseline point / best TTL of any Helix point (batch free).
    batch_gain = concurrent users Helix serves on the N GPUs with TTL <= the baseline's best TTL, divided
                 by the users the baseline serves at that TTL (the baseline's fastest point).
    The same two ratios against the Medha-style kvp family go to ``detail["vs_kvp"]``."""
    if context < 1:
        raise PlannerError(f"--context must be >= 1, got {context}")
    if not batches or min(batches) < 1:
        raise PlannerError("batch sizes must be >= 1")
    layouts = enumerate_layouts(model, gpus)
    fams: dict[str, list[Layout]] = {f: [x for x in layouts if x.family == f] for f in FAMILIES}
    if not fams[BASELINE]:
        raise PlannerError(f"{gpus} GPUs give no valid baseline layout for {model.name}")
    if not fams[HELIX]:
        raise PlannerError(
            f"{gpus} GPUs give no valid helix layout for {model.name} (helix needs kvp >= 2 and "
            f"{model.n_heads} heads divisible by kvp*tpa)"
        )
    frontiers: dict[str, list[Point]] = {}
    for fam, lays in fams.items():
        pts = [p for x in lays for b in batches if (p := _point(model, hw, x, b, context, prec, gpus))]
        frontiers[fam] = pareto_frontier(pts)
    if not frontiers[BASELINE] or not (frontiers[HELIX] or frontiers[HELIX_HOPB]):
        raise PlannerError(
            f"nothing fits: {model.name} at context {context} does not fit on {gpus} x {hw.name} "
            f"({hw.hbm_capacity / _G:.0f} GB each) in any layout"
        )
    helix_layouts = fams[HELIX] + fams[HELIX_HOPB]
    helix_best = max(
        (f[0] for f in (frontiers[HELIX], frontiers[HELIX_HOPB]) if f), key=lambda p: p.tokens_per_s_user
    )

    def gains(base_best: Point) -> dict[str, Any]:
        # Helix at the reference's best TTL: the largest micro-batch of each Helix layout within it.
        ttl_limit = base_best.ttl_ms * 1e-3 * (1 + 1e-9)
        best: tuple[int, Layout | None, int] = (0, None, 0)
        for lay in helix_layouts:
            b = max_batch(model, hw, lay, context, prec, ttl_limit)
            users = (gpus // lay.gpus) * lay.pp * b
            if users > best[0]:
                best = (users, lay, b)
        at = _point(model, hw, best[1], best[2], context, prec, gpus) if best[1] is not None else None
        return {
            "interactivity_gain": helix_best.tokens_per_s_user / base_best.tokens_per_s_user,
            "batch_gain": best[0] / base_best.users,
            "reference_best": asdict(base_best),
            "helix_at_reference_ttl": asdict(at) if at else None,
        }

    headline = gains(frontiers[BASELINE][0])
    detail: dict[str, Any] = {
        "baseline_best": headline["reference_best"],
        "helix_best": asdict(helix_best),
        "helix_at_baseline_ttl": headline["helix_at_reference_ttl"],
        "kernel_overhead_us": hw.kernel_overhead / _US,
        "link_latency_us": hw.link_latency / _US,
    }
    if frontiers[KVP]:
        vs = gains(frontiers[KVP][0])
        detail["vs_kvp"] = {k: vs[k] for k in ("interactivity_gain", "batch_gain", "reference_best")}
    return PlanResult(
        model=model.name,
        hardware=hw.name,
        precision={
            "weights": prec.weights,
            "kv": prec.kv,
            "attention_math": prec.attention,
            "lm_head": prec.lm_head,
        },
        context=context,
        gpus=gpus,
        batches=list(batches),
        n_layouts={f: len(v) for f, v in fams.items()},
        frontiers=frontiers,
        interactivity_gain=headline["interactivity_gain"],
        batch_gain=headline["batch_gain"],
        detail=detail,
    )


# ---------------------------------------------------------------------------------------------- CLI


def _table(result: PlanResult) -> str:
    lines = [
        f"{result.model} on {result.gpus} x {result.hardware}, context {result.context}, precision "
        f"weights={result.precision['weights']} kv={result.precision['kv']} "
        f"attention-math={result.precision['attention_math']}",
        "layouts: " + ", ".join(f"{k} {v}" for k, v in result.n_layouts.items()),
    ]
    for fam, pts in result.frontiers.items():
        lines.append("")
        lines.append(f"{fam} frontier ({len(pts)} points)")
        lines.append(
            f"  {'tok/s/user':>10} {'tok/s/GPU':>10} {'TTL ms':>8} {'users':>6}  "
            "layout (x replicas, micro-batch)"
        )
        for p in pts:
            lines.append(
                f"  {p.tokens_per_s_user:10.1f} {p.tokens_per_s_gpu:10.2f} {p.ttl_ms:8.3f} {p.users:6d}  "
                f"{p.layout} (x{p.replicas}, b={p.batch})"
            )
    lines.append("")
    lines.append(
        f"interactivity_gain = {result.interactivity_gain:.3f}  (best baseline TTL / best Helix TTL)"
    )
    lines.append(
        f"batch_gain         = {result.batch_gain:.2f}  "
        "(users Helix serves at the baseline's best TTL / the baseline's)"
    )
    return "\n".join(lines)


def _plot(result: PlanResult, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=100)
    styles = {
        BASELINE: ("tab:gray", "o"),
        KVP: ("tab:green", "v"),
        HELIX: ("tab:blue", "s"),
        HELIX_HOPB: ("tab:orange", "^"),
    }
    for fam, pts in result.frontiers.items():
        if not pts:
            continue
        color, marker = styles[fam]
        xs = [p.tokens_per_s_gpu for p in pts]
        ys = [p.tokens_per_s_user for p in pts]
        ax.step(xs, ys, where="post", color=color, alpha=0.5)
        ax.plot(xs, ys, marker, color=color, label=fam, markersize=4)
    ax.set_xscale("log")
    ax.set_xlabel("tokens/s/GPU (throughput)")
    ax.set_ylabel("tokens/s/user (interactivity)")
    ax.set_title(
        f"{result.model}, {result.gpus} x {result.hardware}, {result.precision['weights']}, "
        f"ctx {result.context}\ninteractivity x{result.interactivity_gain:.2f}, "
        f"users at baseline's best TTL x{result.batch_gain:.1f}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="helix plan",
        description="Roofline planner for decode: Pareto frontier of layouts (baseline vs Helix).",
    )
    p.add_argument(
        "--model", default="deepseek-r1", help=f"preset ({', '.join(MODEL_PRESETS)}) or config.json path"
    )
    p.add_argument(
        "--hardware", default="gb200-nvl72", help=f"preset ({', '.join(HARDWARE_PRESETS)}) or 'custom'"
    )
    p.add_argument("--bandwidth", type=float, help="custom: HBM/DRAM bandwidth per GPU, GB/s")
    p.add_argument("--flops", type=float, help="custom: dense FLOP/s per GPU, TFLOP/s (all precisions)")
    p.add_argument("--link-bandwidth", type=float, help="custom: link bandwidth per GPU per direction, GB/s")
    p.add_argument("--link-latency", type=float, help="custom: latency per collective phase, us")
    p.add_argument("--capacity", type=float, help="memory per GPU, GB (overrides the preset)")
    p.add_argument(
        "--kernel-overhead",
        type=float,
        help=f"fixed cost per kernel, us (presets: {_KERNEL_OVERHEAD / _US:g}; custom: 0); docs/planner.md",
    )
    p.add_argument("--precision", default="bf16", help="weights and KV precision: bf16, fp8, fp4")
    p.add_argument("--kv-precision", help="KV cache precision if it differs from --precision")
    p.add_argument("--attention-math", help="precision of the attention matmuls (default: the KV precision)")
    p.add_argument("--context", type=int, default=1 << 20, help="cached tokens per request")
    p.add_argument("--gpus", type=int, default=64, help="GPU count N")
    p.add_argument("--batch", type=int, nargs="+", help="micro-batch sizes to sweep (default 1,2,4..4096)")
    p.add_argument("--layout", help="evaluate one layout only, e.g. 'helix:kvp=64,tpa=1,ffn_tp=8,ffn_ep=8'")
    p.add_argument("--json", action="store_true", help="print one JSON object (the last line of stdout)")
    p.add_argument("--plot", default="plan.png", help="PNG path for the frontier plot (not with --json)")
    return p


def _hardware_from_args(args: argparse.Namespace) -> Hardware:
    custom = [args.bandwidth, args.flops, args.link_bandwidth, args.link_latency]
    if args.hardware.lower() == "custom" or any(v is not None for v in custom):
        names = ["--bandwidth", "--flops", "--link-bandwidth", "--link-latency"]
        missing = [n for n, v in zip(names, custom, strict=True) if v is None]
        if missing:
            raise PlannerError(f"custom hardware needs {', '.join(names)}; missing {', '.join(missing)}")
        hw = custom_hardware(args.bandwidth, args.flops, args.link_bandwidth, args.link_latency)
    else:
        hw = get_hardware(args.hardware)
    if args.capacity is not None:
        if args.capacity <= 0:
            raise PlannerError(f"--capacity must be positive, got {args.capacity}")
        hw = replace(hw, hbm_capacity=args.capacity * _G)
    if args.kernel_overhead is not None:
        if args.kernel_overhead < 0:
            raise PlannerError(f"--kernel-overhead must be >= 0, got {args.kernel_overhead}")
        hw = replace(hw, kernel_overhead=args.kernel_overhead * _US)
    return hw


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(argv) if argv is not None else None)
    try:
        model = get_model(args.model)
        hw = _hardware_from_args(args)
        prec = Precision(
            weights=args.precision.lower(),
            kv=(args.kv_precision or args.precision).lower(),
            attn_math=(args.attention_math or "").lower(),
        )
        if args.gpus < 1:
            raise PlannerError(f"--gpus must be >= 1, got {args.gpus}")
        batches = args.batch or DEFAULT_BATCHES
        if args.layout:
            layout = parse_layout(args.layout)
            check_layout(model, layout)
            if args.gpus % layout.gpus:
                raise PlannerError(
                    f"layout {layout.label} uses {layout.gpus} GPUs, which does not divide --gpus {args.gpus}"
                )
            rows = [{"batch": b, **predict_step(model, hw, layout, b, args.context, prec)} for b in batches]
            if args.json:
                print(json.dumps({"layout": layout.label, "steps": rows}))
            else:
                for r in rows:
                    print(
                        f"b={r['batch']:5d} ttl={r['ttl'] * 1e3:9.3f} ms  "
                        f"tok/s/GPU={r['tokens_per_s_gpu']:10.2f}  "
                        f"fits={bool(r['fits'])}  "
                        + " ".join(f"{k}={r[k] * 1e3:.3f}" for k in _LAYER_SUM_KEYS + ("lm_head",))
                    )
            return 0
        result = plan(model, hw, prec, args.context, args.gpus, batches)
    except PlannerError as exc:
        print(f"helix plan: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(_table(result))
    _plot(result, args.plot)
    print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

Modules, one role each: ``errors`` (PlannerError), ``precision`` (bytes per value, Precision), ``models``
(ModelSpec, presets, config.json), ``hardware`` (Hardware, presets), ``layouts`` (Layout, parsing,
validity, enumeration), ``step`` (the time and memory of one decode step), ``frontier`` (the sweep, Pareto
frontiers, the headline ratios), ``cli`` (``python -m helix plan``). This package re-exports their public
names, so ``helix.planner.<name>`` is all a caller needs.
"""

from __future__ import annotations

from .cli import main
from .errors import PlannerError
from .frontier import DEFAULT_BATCHES, PlanResult, Point, max_batch, pareto_frontier, plan
from .hardware import HARDWARE_PRESETS, Hardware, custom_hardware, get_hardware
from .layouts import (
    BASELINE,
    FAMILIES,
    HELIX,
    HELIX_HOPB,
    KVP,
    Layout,
    check_layout,
    enumerate_layouts,
    parse_layout,
)
from .models import MODEL_PRESETS, ModelSpec, get_model, model_from_config
from .precision import PRECISIONS, Precision
from .step import _kernels_per_layer as _kernels_per_layer  # tests/test_planner.py checks the count
from .step import memory_per_gpu, predict_step

__all__ = [
    "PRECISIONS",
    "HARDWARE_PRESETS",
    "MODEL_PRESETS",
    "DEFAULT_BATCHES",
    "BASELINE",
    "KVP",
    "HELIX",
    "HELIX_HOPB",
    "FAMILIES",
    "PlannerError",
    "ModelSpec",
    "Hardware",
    "Layout",
    "Precision",
    "Point",
    "PlanResult",
    "get_model",
    "get_hardware",
    "custom_hardware",
    "model_from_config",
    "parse_layout",
    "check_layout",
    "enumerate_layouts",
    "predict_step",
    "memory_per_gpu",
    "max_batch",
    "pareto_frontier",
    "plan",
    "main",
]

"""The sweep: every layout x micro-batch that fits, each family's Pareto frontier (``pareto_frontier``),
the largest micro-batch within a TTL (``max_batch``) and the two headline ratios (``plan``)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import PlannerError
from .hardware import _G, _US, Hardware
from .layouts import BASELINE, FAMILIES, HELIX, HELIX_HOPB, KVP, Layout, enumerate_layouts
from .models import ModelSpec
from .precision import Precision
from .step import predict_step

__all__ = ["DEFAULT_BATCHES", "PlanResult", "Point", "max_batch", "pareto_frontier", "plan"]


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

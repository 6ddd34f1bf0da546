"""``python -m helix plan``: argument parsing, the frontier table and plot, ``main(argv)``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace

from .errors import PlannerError
from .frontier import DEFAULT_BATCHES, PlanResult, plan
from .hardware import _G, _KERNEL_OVERHEAD, _US, HARDWARE_PRESETS, Hardware, custom_hardware, get_hardware
from .layouts import BASELINE, HELIX, HELIX_HOPB, KVP, check_layout, parse_layout
from .models import MODEL_PRESETS, get_model
from .precision import Precision
from .step import _LAYER_SUM_KEYS, predict_step

__all__ = ["main"]


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

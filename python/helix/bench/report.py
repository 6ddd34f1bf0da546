"""Markdown tables for docs/performance.md from the JSON the suites wrote (bench-results/ by default).

    python -m helix bench report [bench-results]

Prints one section per file found; copy what changed into docs/performance.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helix.bench import speculative

__all__ = ["main"]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _meta_line(meta: dict) -> str:
    load = meta.get("loadavg_1_5_15", [float("nan")])[0]
    threads = meta.get("threads")
    return f"_{meta.get('cpu')}, {threads} thread(s), load {load:.2f} at the end, {meta.get('date')}_"


def attention(d: dict) -> str:
    m = d["meta"]
    out = [_meta_line(m)]
    if "copy_gbs" in m:
        out.append(f"Copy ceiling in the same run: {m['copy_gbs']:.1f} GB/s. Timing: {m.get('timing')}.")
    out += [
        "",
        "| S | T | KV | kernel | ms | GFLOP/s | GB/s | of copy | NumPy f32 GFLOP/s | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        kernel = r.get("kernel", m.get("attention_kernels", "?"))
        out.append(
            f"| {r['S']} | {r.get('T', 1)} | {r['kv_dtype']} | {kernel} | "
            f"{r['seconds'] * 1e3:.2f} | {r['gflops']:.1f} | "
            f"{r['gbytes_per_s']:.1f} | {r.get('ratio_to_copy', float('nan')):.3f} | "
            f"{r['numpy_gflops']:.1f} | {r['ratio_to_numpy']:.2f} |"
        )
    return "\n".join(out)


def attention_accuracy(d: dict) -> str:
    m = d["meta"]
    shape = m["shape"]
    out = [
        f"_{m.get('cpu')}, {m.get('date')}; H={shape['H']} D={shape['D']} R={shape['R']} S={shape['S']} "
        f"T={shape['T']}, bf16 keys; error = {m.get('error')}_",
        "",
        "| kernel path | kernel | score spread | max abs score | o error | lse error |",
        "|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        out.append(
            f"| {r['kernel_path']} | {r['kernel']} | {r['spread']:.0f} | {r['max_score']:.0f} | "
            f"{r['o_error']:.1e} | {r['lse_error']:.1e} |"
        )
    return "\n".join(out)


def ops(d: dict) -> str:
    m = d["meta"]
    out = [
        _meta_line(m),
        f"Ceilings in the same run: copy {m['copy_gbs']:.1f} GB/s, NumPy f32 matmul "
        f"{m['matmul_gflops']:.1f} GFLOP/s.",
        "",
        "| op | case | ms | GB/s | GFLOP/s | / copy | / NumPy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        out.append(
            f"| {r['op']} | {r['case']} | {r['ms']:.3f} | {r['gbytes_per_s']:.1f} | {r['gflops']:.1f} | "
            f"{r['ratio_to_copy']:.2f} | {r['ratio_to_numpy']:.2f} |"
        )
    return "\n".join(out)


def helix_step(d: dict) -> str:
    out = [
        _meta_line(d["meta"]),
        "",
        "| ranks | context | T | bytes/rank (formula) | measured | step ms | attention ms | all-to-all ms "
        "| a2a / step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        flag = " *" if r["oversubscribed"] else ""
        out.append(
            f"| {r['ranks']}{flag} | {r['context']} | {r['T']} | {r['bytes_formula']} | "
            f"{r['bytes_measured']} | "
            f"{r['step_ms']:.2f} | {r['attention_ms']:.2f} | {r['all_to_all_ms']:.3f} | "
            f"{r['exchange_share']:.3f} |"
        )
    return "\n".join(out)


def decode(d: dict) -> str:
    m = d["meta"]
    out = [
        _meta_line(m),
        "",
        "| config | context | ms/token (median) | min | KV MiB/rank | attention | all-to-all | linear "
        "| MoE | "
        "all-reduce | other | copy GB/s | matmul GFLOP/s | planner ms | measured / planner |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        s, p, c = r["shares"], r["planner"], r["ceilings"]
        out.append(
            f"| {r['config']} | {r['context']} | {r['step_ms']:.1f} | {r['step_ms_min']:.1f} | "
            f"{r['kv_bytes_per_rank'] / 2**20:.1f} | {s['attention']:.2f} | {s['exchange']:.2f} | "
            f"{s['linear']:.2f} | {s['moe']:.2f} | {s['allreduce']:.2f} | {s['other']:.2f} | "
            f"{c['copy_gbs']:.1f} | {c['matmul_gflops']:.0f} | {p['predicted_ms']:.1f} | "
            f"{p['measured_over_predicted']:.2f} |"
        )
    return "\n".join(out)


def peer(d: dict) -> str:
    def f(v, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    out = [
        _meta_line(d["meta"]),
        "",
        "| system | threads | prompt | prefill tok/s | helix x | decode ms/token | helix x |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        out.append(
            f"| {r['system']} | {r['threads']} | {r['prompt']} | {f(r['prefill_tok_s'], '.1f')} | "
            f"{f(r['helix_prefill_speedup'], '.2f')} | {f(r['decode_ms'], '.1f')} | "
            f"{f(r['helix_decode_speedup'], '.2f')} |"
        )
    return "\n".join(out)


def prefill(d: dict) -> str:
    out = [
        _meta_line(d["meta"]),
        "",
        "| config | prompt | s (median) | min | tok/s | GFLOP/s | bf16 matmul GFLOP/s | / ceiling "
        "| attention | linear | MoE | all-to-all | other |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["rows"]:
        s = r["shares"]
        out.append(
            f"| {r['config']} | {r['prompt']} | {r['median_s']:.1f} | {min(r['seconds']):.1f} | "
            f"{r['tokens_per_s']:.1f} | {r['gflops']:.1f} | {r['bf16_ceiling_gflops']:.0f} | "
            f"{r['fraction_of_bf16_ceiling']:.2f} | {s['attention']:.2f} | {s['linear']:.2f} | "
            f"{s['moe']:.2f} | {s['exchange']:.2f} | {s['other']:.2f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:] or ["bench-results"])[0])
    # Longest prefix first: attention_accuracy*.json before attention*.json.
    render = {
        "attention_accuracy": attention_accuracy,
        "attention": attention,
        "ops": ops,
        "helix_step": helix_step,
        "decode": decode,
        "peer": peer,
        "prefill": prefill,
        "speculative": speculative.markdown,
    }
    for path in sorted(folder.glob("*.json")):
        kind = next((k for k in render if path.stem.startswith(k)), None)
        data = _load(path)
        if kind and data:
            print(f"### {path.name}\n\n{render[kind](data)}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

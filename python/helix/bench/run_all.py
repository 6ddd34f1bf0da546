"""Runs every CPU benchmark suite and writes JSON, PNG and logs into one folder. Re-run on a quiet machine.

    python -m helix bench all [--threads N] [--out DIR]

N: the threads of the second pass of attention and of peer (default 2); DIR: bench-results. The peers
(vLLM CPU, llama.cpp) run where scripts/peers.sh installed them ($HELIX_PEERS_DIR), else are skipped.
Each suite runs as its own process with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset, so that NumPy's
OpenBLAS picks its kernel for this CPU; then ``python -m helix bench report DIR`` prints the tables.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["main", "passes"]


def passes(out: Path, threads: int) -> list[tuple[str, list[str]]]:
    """(log name, arguments of `python -m helix bench`) of every CPU pass, in order."""

    def files(stem: str) -> list[str]:
        return ["--out", f"{out}/{stem}.json", "--png", f"{out}/{stem}.png"]

    t = str(threads)
    return [
        ("attention-1t", ["attention", "--threads", "1", *files("attention-1t")]),
        ("attention_accuracy", ["attention-accuracy", "--out", f"{out}/attention_accuracy.json"]),
        ("ops-1t", ["ops", "--threads", "1", *files("ops-1t")]),
        ("helix_step", ["helix"]),
        ("decode", ["decode"]),
        ("prefill", ["prefill", *files("prefill")]),
        ("speculative", ["speculative", *files("speculative")]),
        ("peer", ["peer", "--threads", f"1,{t}", *files("peer")]),
        ("serve", ["serve", "--out", f"{out}/serve"]),
        (f"attention-{t}t", ["attention", "--threads", t, *files(f"attention-{t}t")]),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m helix bench all", description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2, help="threads of the second attention pass and of peer")
    ap.add_argument("--out", default="bench-results", help="folder for JSON, PNG and logs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    for name, suite_args in passes(out, args.threads):
        with open("/proc/loadavg") as f:
            load = " ".join(f.read().split()[:3])
        print(f"== {' '.join(suite_args)} (load: {load})", flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "helix", "bench", *suite_args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        print(proc.stdout, end="", flush=True)
        (out / f"{name}.log").write_text(proc.stdout)
        if proc.returncode != 0:
            print(
                f"helix bench all: {suite_args[0]} failed with exit code {proc.returncode}", file=sys.stderr
            )
            return proc.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())

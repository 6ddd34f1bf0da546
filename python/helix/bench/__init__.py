"""Benchmarks (not tests), one home: each suite's module has ``main(argv)``, prints a table and writes JSON.

``python -m helix bench <suite>`` runs a suite of SUITES (one line each); ``bench all`` runs every CPU suite
into bench-results/ and ``bench report`` turns their JSON into the markdown tables of docs/performance.md.
The CUDA suites (cuda_ops, cuda_layer) need a GPU and fail with one line without one (``--smoke`` runs
them on the SIMT emulator). ``common`` holds the shared timing, ceilings, JSON, plotting, progress and
MPI-launch helpers. Results and the machine they were measured on: docs/performance.md.
"""

from __future__ import annotations

__all__ = ["SUITES"]

# suite name -> (module, what it measures)
SUITES: dict[str, tuple[str, str]] = {
    "attention": ("helix.bench.attention", "CPU partial attention vs copy and NumPy ceilings"),
    "attention-accuracy": ("helix.bench.attention_accuracy", "every CPU attention path vs float64"),
    "helix": ("helix.bench.helix_step", "one Helix attention step over MPI ranks: bytes and shares"),
    "ops": ("helix.bench.ops", "CPU linear layers (f32 and bf16 weights) vs copy and NumPy ceilings"),
    "linear": ("helix.bench.linear", "bf16-weight linear paths at prefill T vs the bf16 matmul ceiling"),
    "decode": ("helix.bench.decode", "end-to-end decode steps per layout vs the planner"),
    "speculative": ("helix.bench.speculative", "MTP speculative decoding: tokens/s per user for k = 0..3"),
    "prefill": ("helix.bench.prefill", "prefill tokens/s per prompt and layout vs the bf16 matmul ceiling"),
    "peer": ("helix.bench.peer", "helix vs vLLM CPU, llama.cpp and transformers, side by side"),
    "serve": ("helix.bench.serve", "helix serve: latency and throughput"),
    "disagg": ("helix.bench.disagg", "disaggregated serving: TTFT and ITL via the router vs aggregated"),
    "cuda_ops": ("helix.bench.cuda_ops", "CUDA kernels vs copy and bf16 GEMM ceilings (GPU)"),
    "cuda_layer": ("helix.bench.cuda_layer", "a DeepSeek-V3-shaped layer decoded on the GPU (GPU)"),
    "all": ("helix.bench.run_all", "every CPU suite into bench-results/ (JSON, PNG, logs)"),
    "report": ("helix.bench.report", "markdown tables from bench-results/*.json"),
}

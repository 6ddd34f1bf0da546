"""Benchmarks (not tests): each module has ``main(argv)``, prints a table and writes JSON.

``python -m helix bench <suite>`` runs the suite's ``main`` (attention, attention-accuracy ->
attention_accuracy, helix -> helix_step, ops, decode, peer); ``common`` holds the shared timing, ceilings,
JSON, plotting, progress and MPI-launch helpers.
Results and the machine they were measured on: docs/performance.md.
"""

from __future__ import annotations

__all__ = ["attention", "attention_accuracy", "common", "cuda_ops", "decode", "helix_step", "ops", "peer"]

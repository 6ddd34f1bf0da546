"""Benchmarks (not tests): each module has ``main(argv)``, prints a table and writes JSON.

``python -m helix bench <name>`` runs ``helix.bench.<name>.main``.
"""

from __future__ import annotations

__all__ = ["attention", "cuda_ops"]

"""Disaggregated serving: context servers prefill, generation servers decode with Helix, and the KV moves
between them re-sharded to the generation layout (docs/disaggregated.md).

layout: which rows a rank of a layout holds and which it pulls from another layout (pure Python);
kv_file: the offline hand-off file; offline: helix.LLM.export_kv / import_kv; handoff: the claim of a
served request's KV and the READs a generation rank posts; agent: the NIXL agent (optional dependency).
"""

from __future__ import annotations

from helix.disagg.kv_file import KVFileError
from helix.disagg.layout import KVLayout, owned_count, owned_positions, pull_runs

__all__ = ["KVFileError", "KVLayout", "owned_count", "owned_positions", "pull_runs"]

"""Helix: Helix-parallel decode for MLA models (DeepSeek-V3 / R1).

Pure-Python modules (config, checkpoint, reference, planner) import nothing compiled. The compiled
runtime (``helix._core``) is loaded on first use of one of its names.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily so that helix.config etc. work without a build.
_LAZY = {
    "BlockTable": "helix._core",
    "PagedKVCache": "helix._core",
    "HelixError": "helix._core",
    "ArgumentError": "helix._core",
    "KVCacheFullError": "helix._core",
    "DeviceMemoryError": "helix._core",
    "ops": "helix._core",
    "Engine": "helix._core",
    "EngineConfig": "helix._core",
    "helix_attention": "helix._core",
    "Communicator": "helix._core",
    "LLM": "helix.llm",
    "SamplingParams": "helix.generate",
    "RequestOutput": "helix.generate",
    "ParallelConfig": "helix.parallel_config",
    "ConfigError": "helix.parallel_config",
    "Mapping": "helix.mapping",
    "ModelConfig": "helix.config",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'helix' has no attribute {name!r}")

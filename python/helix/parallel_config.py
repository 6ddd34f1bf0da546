"""Parallel configuration in the reference implementation's vocabulary, from JSON or YAML.

    tensor_parallel_size: 2
    context_parallel_size: 2
    cp_config: {cp_type: HELIX, tokens_per_block: 32}
    kv_cache_config: {tokens_per_block: 32, max_tokens: 65536}

Every mistake raises ConfigError (a ValueError) naming the key and the file. Pure Python.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helix.mapping import Mapping

__all__ = ["ConfigError", "ParallelConfig"]

DEFAULT_TOKENS_PER_BLOCK = 32
# cp_type values of the reference implementation; only HELIX shards the KV cache the way this runtime does.
KNOWN_CP_TYPES = ("HELIX", "ULYSSES", "STAR", "RING")

_TOP_KEYS = ("tensor_parallel_size", "context_parallel_size", "cp_config", "kv_cache_config")
_CP_KEYS = ("cp_type", "tokens_per_block")
_KV_KEYS = ("tokens_per_block", "max_tokens")


class ConfigError(ValueError):
    """A bad parallel configuration; `key` is the dotted key at fault, `source` the file (or "<dict>")."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source = source
        self.key = key
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")


def _check_keys(section: dict[str, Any], allowed: tuple[str, ...], prefix: str, source: str) -> None:
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(allowed)}"
            raise ConfigError(source, prefix + str(key), f"unknown key{hint}")


def _positive_int(value: Any, key: str, source: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(source, key, f"must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ConfigError(source, key, f"must be positive, got {value}")
    return value


def _section(d: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    value = d.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(source, key, f"must be a mapping, got {type(value).__name__} {value!r}")
    return value


@dataclass(frozen=True)
class ParallelConfig:
    tensor_parallel_size: int = 1
    context_parallel_size: int = 1
    cp_type: str = "HELIX"
    tokens_per_block: int = DEFAULT_TOKENS_PER_BLOCK
    max_tokens: int | None = None
    source: str = "<dict>"

    def __post_init__(self) -> None:
        src = self.source
        _positive_int(self.tensor_parallel_size, "tensor_parallel_size", src)
        _positive_int(self.context_parallel_size, "context_parallel_size", src)
        _positive_int(self.tokens_per_block, "tokens_per_block", src)
        if self.max_tokens is not None:
            _positive_int(self.max_tokens, "kv_cache_config.max_tokens", src)
        if not isinstance(self.cp_type, str):
            raise ConfigError(src, "cp_config.cp_type", f"must be a string, got {self.cp_type!r}")
        if self.cp_type not in KNOWN_CP_TYPES:
            raise ConfigError(
                src,
                "cp_config.cp_type",
                f"unknown cp_type {self.cp_type!r}; one of {', '.join(KNOWN_CP_TYPES)}",
            )
        if self.cp_type != "HELIX" and self.context_parallel_size > 1:
            raise ConfigError(
                src,
                "cp_config.cp_type",
                f"cp_type {self.cp_type} is not supported with context_parallel_size "
                f"{self.context_parallel_size} > 1: this runtime implements cp_type HELIX only",
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<dict>") -> ParallelConfig:
        if not isinstance(d, dict):
            raise ConfigError(source, "", f"the configuration must be a mapping, got {type(d).__name__}")
        _check_keys(d, _TOP_KEYS, "", source)
        cp = _section(d, "cp_config", source)
        kv = _section(d, "kv_cache_config", source)
        _check_keys(cp, _CP_KEYS, "cp_config.", source)
        _check_keys(kv, _KV_KEYS, "kv_cache_config.", source)

        cp_tpb, kv_tpb = cp.get("tokens_per_block"), kv.get("tokens_per_block")
        if cp_tpb is not None:
            _positive_int(cp_tpb, "cp_config.tokens_per_block", source)
        if kv_tpb is not None:
            _positive_int(kv_tpb, "kv_cache_config.tokens_per_block", source)
        if cp_tpb is not None and kv_tpb is not None and cp_tpb != kv_tpb:
            raise ConfigError(
                source,
                "cp_config.tokens_per_block",
                f"{cp_tpb} differs from kv_cache_config.tokens_per_block {kv_tpb}: KV ownership rotates "
                "over CP ranks per cache block, so the two must be equal",
            )
        tpb = cp_tpb if cp_tpb is not None else kv_tpb if kv_tpb is not None else DEFAULT_TOKENS_PER_BLOCK
        return cls(
            tensor_parallel_size=d.get("tensor_parallel_size", 1),
            context_parallel_size=d.get("context_parallel_size", 1),
            cp_type=cp.get("cp_type", "HELIX"),
            tokens_per_block=tpb,
            max_tokens=kv.get("max_tokens"),
            source=source,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ParallelConfig:
        path = Path(path)
        source = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(source, "", f"cannot read the file: {e.strerror or e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(source, "", f"not UTF-8 text: {e}") from e
        suffix = path.suffix.lower()
        # RecursionError: a document nested deeper than the parser's recursion limit.
        if suffix == ".json":
            try:
                data = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as e:
                raise ConfigError(source, "", f"invalid JSON: {e}") from e
        elif suffix in (".yaml", ".yml"):
            import yaml

            try:
                data = yaml.safe_load(text)
            except (yaml.YAMLError, RecursionError) as e:
                raise ConfigError(source, "", f"invalid YAML: {e}") from e
            if data is None:
                data = {}
        else:
            raise ConfigError(source, "", f"unknown file type {suffix!r}: use .json, .yaml or .yml")
        return cls.from_dict(data, source=source)

    def to_dict(self) -> dict[str, Any]:
        kv: dict[str, Any] = {"tokens_per_block": self.tokens_per_block}
        if self.max_tokens is not None:
            kv["max_tokens"] = self.max_tokens
        return {
            "tensor_parallel_size": self.tensor_parallel_size,
            "context_parallel_size": self.context_parallel_size,
            "cp_config": {"cp_type": self.cp_type, "tokens_per_block": self.tokens_per_block},
            "kv_cache_config": kv,
        }

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.context_parallel_size

    def check_world_size(self, n: int) -> None:
        """Raises ConfigError unless the job has exactly tp * cp ranks (n: the number of MPI ranks)."""
        if n != self.world_size:
            raise ConfigError(
                self.source,
                "tensor_parallel_size",
                f"tensor_parallel_size * context_parallel_size = {self.tensor_parallel_size} * "
                f"{self.context_parallel_size} = {self.world_size} ranks, but the job has {n} MPI ranks "
                f"(launch with mpiexec -n {self.world_size})",
            )

    def check_heads(self, num_heads: int) -> None:
        """Raises ConfigError unless num_heads splits into tp * cp equal head chunks."""
        if num_heads % self.world_size != 0:
            raise ConfigError(
                self.source,
                "context_parallel_size",
                f"the model's {num_heads} attention heads are not divisible by tensor_parallel_size * "
                f"context_parallel_size = {self.world_size}: every rank must hold an equal head chunk",
            )

    def mapping(self, rank: int = 0) -> Mapping:
        return Mapping(self.world_size, self.tensor_parallel_size, self.context_parallel_size, rank)

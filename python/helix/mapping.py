"""Rank layout of Helix parallelism: N = tp * cp ranks, CP innermost (rank = tp_rank * cp + cp_rank).

During attention a rank is one of `cp` context-parallel ranks (consecutive ranks, sharing the same TP heads,
each holding part of the KV cache) and one of `tp` tensor-parallel ranks (the ranks with the same cp_rank).
After the all-to-all over its CP group, CP rank c holds head chunk c of its TP group's heads, so over all N
ranks it holds chunk `tp_rank * cp + cp_rank` == rank: its index in the N-wide FFN / o_proj group.
Pure Python: imports nothing compiled.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Mapping"]


@dataclass(frozen=True)
class Mapping:
    world_size: int
    tp_size: int
    cp_size: int
    rank: int = 0

    def __post_init__(self) -> None:
        for name in ("world_size", "tp_size", "cp_size", "rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"Mapping.{name} must be an int, got {type(value).__name__} {value!r}")
        for name in ("world_size", "tp_size", "cp_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Mapping.{name} must be >= 1, got {getattr(self, name)}")
        if self.tp_size * self.cp_size != self.world_size:
            raise ValueError(
                f"Mapping: world_size ({self.world_size}) must equal tp_size * cp_size "
                f"({self.tp_size} * {self.cp_size} = {self.tp_size * self.cp_size})"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"Mapping.rank must be in [0, {self.world_size}), got {self.rank}")

    @property
    def tp_rank(self) -> int:
        return self.rank // self.cp_size

    @property
    def cp_rank(self) -> int:
        return self.rank % self.cp_size

    @property
    def cp_group(self) -> list[int]:
        """The cp_size consecutive ranks that share this rank's TP heads; index in it == cp_rank."""
        start = self.tp_rank * self.cp_size
        return list(range(start, start + self.cp_size))

    @property
    def tp_group(self) -> list[int]:
        """The tp_size ranks with this rank's cp_rank; index in it == tp_rank."""
        return [t * self.cp_size + self.cp_rank for t in range(self.tp_size)]

    @property
    def ffn_group(self) -> list[int]:
        """All N ranks: the group of o_proj (row-parallel) and the FFN / MoE; index in it == rank."""
        return list(range(self.world_size))

    @property
    def ffn_rank(self) -> int:
        return self.rank

    @property
    def head_chunk(self) -> int:
        """The chunk of all heads (N chunks of num_heads / N) this rank holds after the all-to-all."""
        return self.tp_rank * self.cp_size + self.cp_rank

    def with_rank(self, rank: int) -> Mapping:
        return Mapping(self.world_size, self.tp_size, self.cp_size, rank)

    def heads_per_tp_rank(self, num_heads: int) -> int:
        """Heads each TP rank attends over (all of them, on every CP rank of its group)."""
        self._check_heads(num_heads)
        return num_heads // self.tp_size

    def heads_per_chunk(self, num_heads: int) -> int:
        """Heads in one head chunk after the all-to-all: num_heads / (tp * cp)."""
        self._check_heads(num_heads)
        return num_heads // self.world_size

    def _check_heads(self, num_heads: int) -> None:
        if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if num_heads % self.world_size != 0:
            raise ValueError(
                f"num_heads ({num_heads}) must be divisible by tp_size * cp_size "
                f"({self.tp_size} * {self.cp_size} = {self.world_size}): every rank holds an equal "
                "head chunk after the all-to-all"
            )

"""Which KV rows a rank of one layout holds, and which rows of another layout's ranks it must pull.

A layout's KV placement (DESIGN.md §4): position p lives on CP rank (p // tokens_per_block) % cp, which
packs the positions it owns densely, in order, into its blocks: for a sequence written in position order
(a prompt, then its tokens), the slot of p on its rank is

    slot(p) = (p // (tokens_per_block * cp)) * tokens_per_block + p % tokens_per_block

and slot k is row k % tokens_per_block of the rank's k // tokens_per_block-th block of the sequence.
TP ranks with the same CP rank hold the same rows. Pure Python: no compiled code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KVLayout", "PullRun", "owned_count", "owned_positions", "pull_runs"]


@dataclass(frozen=True)
class KVLayout:
    """The KV placement of one job: tp * cp ranks (rank = tp_rank * cp + cp_rank), tokens_per_block."""

    tp: int
    cp: int
    tokens_per_block: int

    def __post_init__(self) -> None:
        for name in ("tp", "cp", "tokens_per_block"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"KVLayout.{name} must be a positive integer, got {value!r}")

    def owner(self, position: int) -> int:
        """The CP rank that holds global position `position`."""
        return (position // self.tokens_per_block) % self.cp

    def slot(self, position: int) -> int:
        """The slot of `position` on its owner (for a sequence written in position order)."""
        tpb = self.tokens_per_block
        return (position // (tpb * self.cp)) * tpb + position % tpb

    def as_dict(self) -> dict[str, int]:
        return {"tp": self.tp, "cp": self.cp, "tokens_per_block": self.tokens_per_block}


def owned_count(layout: KVLayout, num_positions: int, cp_rank: int) -> int:
    """How many of positions [0, num_positions) CP rank cp_rank holds (helix._core.kv_owned_count)."""
    tpb, cp = layout.tokens_per_block, layout.cp
    full = num_positions // tpb
    n = (full // cp + (1 if cp_rank < full % cp else 0)) * tpb
    return n + (num_positions % tpb if full % cp == cp_rank else 0)


def owned_positions(layout: KVLayout, num_positions: int, cp_rank: int) -> list[range]:
    """The positions of [0, num_positions) CP rank cp_rank holds, as ascending runs (one per block)."""
    tpb = layout.tokens_per_block
    starts = range(cp_rank * tpb, num_positions, tpb * layout.cp)
    return [range(b, min(b + tpb, num_positions)) for b in starts]


@dataclass(frozen=True)
class PullRun:
    """`count` consecutive positions from `position` on: slots [src_slot, src_slot + count) of source CP rank
    src_rank land in rows [dst_row, dst_row + count) of the destination rank's rows (ascending positions)."""

    position: int
    count: int
    src_rank: int
    src_slot: int
    dst_row: int


def pull_runs(src: KVLayout, dst: KVLayout, num_positions: int, dst_cp_rank: int) -> list[PullRun]:
    """What destination CP rank dst_cp_rank pulls of positions [0, num_positions): exactly the positions it
    holds under `dst`, each from the source CP rank that holds it under `src`, in runs that are contiguous
    on both sides (a run never crosses a block of either layout)."""
    if not 0 <= dst_cp_rank < dst.cp:
        raise ValueError(f"dst_cp_rank must be in [0, {dst.cp}), got {dst_cp_rank}")
    runs, row = [], 0
    for block in owned_positions(dst, num_positions, dst_cp_rank):
        p = block.start
        while p < block.stop:
            end = min(block.stop, (p // src.tokens_per_block + 1) * src.tokens_per_block)
            runs.append(PullRun(p, end - p, src.owner(p), src.slot(p), row))
            row += end - p
            p = end
    return runs

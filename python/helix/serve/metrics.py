"""The server's metrics in Prometheus' text exposition format (version 0.0.4), for GET /metrics.

Written by the engine loop after every step, read by the HTTP thread; one lock keeps a scrape consistent.
Latencies are measured on rank 0 when a token is handed to the HTTP side: time to first token from the
request's arrival, inter-token latency between a request's consecutive tokens.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Sequence

__all__ = ["Histogram", "ServerMetrics"]

TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Cumulative buckets (upper bounds in seconds, +Inf implied), sum and count."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def lines(self, name: str) -> list[str]:
        out, total = [], 0
        for bound, n in zip([*map(_num, self.bounds), "+Inf"], self.counts, strict=True):
            total += n
            out.append(f'{name}_bucket{{le="{bound}"}} {total}')
        return [*out, f"{name}_sum {_num(self.sum)}", f"{name}_count {self.count}"]


def _num(v: float) -> str:
    return repr(float(v))


class ServerMetrics:
    def __init__(self, model_name: str, kv_blocks_per_rank: int, speculative_tokens: int = 0) -> None:
        self._lock = threading.Lock()
        self.model_name = model_name
        self.kv_blocks_per_rank = kv_blocks_per_rank
        self.speculative_tokens = speculative_tokens  # 0: no speculative decoding, no spec_decode families
        self.spec_steps = self.spec_drafts = self.spec_accepted = 0  # verify steps, drafts verified, accepted
        self.running = 0
        self.waiting = 0
        self.kv_blocks_used: list[int] = []  # per rank
        self.generation_tokens = 0
        self.prompt_tokens = 0
        self.finished: dict[str, int] = {}  # requests by finish reason
        self.ttft = Histogram(TTFT_BUCKETS_S)
        self.itl = Histogram(ITL_BUCKETS_S)

    def record_step(self, running: int, waiting: int, kv_blocks_used: list[int]) -> None:
        with self._lock:
            self.running, self.waiting, self.kv_blocks_used = running, waiting, list(kv_blocks_used)

    def record_tokens(self, ttft_s: list[float], itl_s: list[float], new_tokens: int) -> None:
        with self._lock:
            for v in ttft_s:
                self.ttft.observe(v)
            for v in itl_s:
                self.itl.observe(v)
            self.generation_tokens += new_tokens

    def record_request(self, prompt_tokens: int, finish_reason: str) -> None:
        with self._lock:
            self.prompt_tokens += prompt_tokens
            self.finished[finish_reason] = self.finished.get(finish_reason, 0) + 1

    def record_speculative(self, steps: int, drafts: int, accepted: int) -> None:
        """Counts of verify steps since the last call (helix.speculative.SpeculativeStats)."""
        with self._lock:
            self.spec_steps += steps
            self.spec_drafts += drafts
            self.spec_accepted += accepted

    def render(self) -> str:
        with self._lock:
            lines: list[str] = []

            def family(name: str, kind: str, help_text: str, samples: list[str]) -> None:
                lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples])

            family(
                "helix_requests_running",
                "gauge",
                "Requests decoding.",
                [f"helix_requests_running {self.running}"],
            )
            family(
                "helix_requests_waiting",
                "gauge",
                "Requests waiting for KV blocks.",
                [f"helix_requests_waiting {self.waiting}"],
            )
            family(
                "helix_kv_blocks_used",
                "gauge",
                "KV cache blocks in use (per layer), per rank.",
                [f'helix_kv_blocks_used{{rank="{r}"}} {n}' for r, n in enumerate(self.kv_blocks_used)],
            )
            family(
                "helix_kv_blocks_total",
                "gauge",
                "KV cache blocks per layer on each rank.",
                [f"helix_kv_blocks_total {self.kv_blocks_per_rank}"],
            )
            family(
                "helix_generation_tokens_total",
                "counter",
                "Tokens generated.",
                [f"helix_generation_tokens_total {self.generation_tokens}"],
            )
            family(
                "helix_prompt_tokens_total",
                "counter",
                "Prompt tokens of finished requests.",
                [f"helix_prompt_tokens_total {self.prompt_tokens}"],
            )
            family(
                "helix_requests_finished_total",
                "counter",
                "Finished requests by finish reason.",
                [
                    f'helix_requests_finished_total{{finish_reason="{k}"}} {v}'
                    for k, v in sorted(self.finished.items())
                ],
            )
            if self.speculative_tokens:
                for name, help_text, value in (
                    ("steps", "Speculative verify steps (one per sequence per step).", self.spec_steps),
                    ("draft_tokens", "MTP draft tokens verified.", self.spec_drafts),
                    ("accepted_tokens", "MTP draft tokens accepted.", self.spec_accepted),
                ):
                    name = f"helix_spec_decode_{name}_total"
                    family(name, "counter", help_text, [f"{name} {value}"])
            family(
                "helix_time_to_first_token_seconds",
                "histogram",
                "Time from arrival to the first token.",
                self.ttft.lines("helix_time_to_first_token_seconds"),
            )
            family(
                "helix_inter_token_latency_seconds",
                "histogram",
                "Time between a request's tokens.",
                self.itl.lines("helix_inter_token_latency_seconds"),
            )
            return "\n".join(lines) + "\n"

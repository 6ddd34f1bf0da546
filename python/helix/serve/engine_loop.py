"""The serving loop that every rank runs in its main thread (DESIGN.md §4, Serving).

Each iteration: rank 0 collects what arrived and what was cancelled from the HTTP side (EngineClient) and
broadcasts it (ControlChannel); every rank then makes the same add_request / abort_request calls, one
LLM.step() when a request is unfinished, and a gather of each rank's KV blocks in use (for /metrics).
Rank 0 hands every request's new tokens to the HTTP side; nothing here waits on a client.

Shutdown: after begin_drain() (SIGTERM or SIGINT on rank 0) no request is accepted; the running and
waiting ones go on for up to drain_timeout seconds, the rest is aborted, and the last broadcast tells
every rank to leave the loop at the same iteration.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from helix.generate import RequestOutput
from helix.serve.channel import Commands, ControlChannel, NewRequest
from helix.serve.client import Delta, EngineClient
from helix.serve.metrics import ServerMetrics

__all__ = ["EngineLoop"]

_MAX_KEPT_STEPS = 10_000


@dataclasses.dataclass
class _Progress:
    """What rank 0 has handed over of one request so far."""

    prompt_tokens: int
    arrival: float
    tokens: int = 0
    text: int = 0  # characters of RequestOutput.text
    last_token: float = 0.0


class EngineLoop:
    def __init__(
        self,
        llm,
        channel: ControlChannel,
        client: EngineClient | None = None,
        metrics: ServerMetrics | None = None,
        drain_timeout: float = 30.0,
    ) -> None:
        """client and metrics: rank 0's (None on the others)."""
        self.llm = llm
        self.channel = channel
        self.client = client
        self.metrics = metrics
        self.drain_timeout = drain_timeout
        self._rids: dict[int, int] = {}  # key -> request id, unfinished requests (every rank)
        self._keys: dict[int, int] = {}  # request id -> key
        self._progress: dict[int, _Progress] = {}  # key -> progress (rank 0)
        self._drain_deadline: float | None = None
        self._spec_counted = (0, 0, 0)  # (steps, drafted, accepted) of llm.stats already in the metrics

    def run(self) -> None:
        """Serves until rank 0 broadcasts shutdown (collective)."""
        while True:
            commands = self.channel.broadcast(self._collect() if self.client is not None else None)
            deltas = self._apply(commands)
            if commands.shutdown:
                self._publish(deltas)
                return
            if self.llm.has_unfinished_requests():
                deltas += self._step()
                self._count_speculative()
                if len(self.llm.stats.step_ms) > _MAX_KEPT_STEPS:  # it keeps one timing per step
                    self.llm.reset_stats()
                    self._spec_counted = (0, 0, 0)
            deltas = self._after_step(deltas)
            used = self.llm.engine.num_kv_blocks - self.llm.engine.num_free_blocks
            kv_used = self.channel.gather(used)
            if self.client is not None:  # before the tokens go out: a client may act on them at once
                sched = self.llm.scheduler
                self.client.running = sched.num_running
                self.metrics.record_step(sched.num_running, sched.num_waiting, kv_used)
            self._publish(deltas)

    def _count_speculative(self) -> None:
        """Rank 0: the speculative counts of the last step into the metrics."""
        spec = self.llm.stats.speculative
        if self.metrics is None or spec is None:
            return
        now = (spec.steps, spec.drafted, spec.accepted)
        self.metrics.record_speculative(*(n - seen for n, seen in zip(now, self._spec_counted, strict=True)))
        self._spec_counted = now

    def _collect(self) -> Commands:
        """Rank 0: the HTTP side's news; waits for some while idle; shutdown once drained."""
        while True:  # idle: no broadcast until there is news, so the other ranks sleep in theirs
            busy = self._busy()
            adds, aborts = self.client.take(block=not busy)
            if busy or adds or aborts or self.client.draining:
                break
        commands = Commands(aborts=aborts)
        for sub in adds:
            seed = sub.params.seed
            if seed is None:  # drawn here and broadcast: every rank samples the same tokens
                seed = int(np.random.SeedSequence().entropy % (2**62))
            params = dataclasses.replace(sub.params, seed=seed)
            commands.adds.append(NewRequest(sub.key, sub.prompt, params, sub.handoff))
            self._progress[sub.key] = _Progress(len(sub.prompt), sub.arrival)
        self._collect_handoff(commands)
        if self.client.draining:
            now = time.monotonic()
            if self._drain_deadline is None:
                self._drain_deadline = now + self.drain_timeout
            live = bool(self._rids or commands.adds)
            if not live or now >= self._drain_deadline:
                commands.aborts += list(self._rids) + [a.key for a in commands.adds]
                commands.shutdown = True
        return commands

    def _apply(self, commands: Commands) -> list[tuple[int, Delta]]:
        """The same add_request / abort_request calls on every rank; the Deltas of what ended here."""
        deltas = self._apply_handoff(commands)
        for new in commands.adds:
            try:
                rid = self._add(new)
            except (ValueError, TypeError) as exc:  # the same on every rank: nothing was queued anywhere
                deltas.append((new.key, Delta([], "", [], 0, "refused", error=str(exc))))
                continue
            self._rids[new.key], self._keys[rid] = rid, new.key
        for key in commands.aborts:
            rid = self._rids.pop(key, None)
            if rid is None:  # already finished
                continue
            del self._keys[rid]
            out = self.llm.abort_request(rid)
            if out is not None and self.client is not None:
                deltas.append((key, self._delta(key, out)))
        return deltas

    # ---- what a disaggregated role (helix.serve.context_role, generation_role) changes

    def _busy(self) -> bool:
        """Whether the loop has work without news (else rank 0 waits for some)."""
        return self.llm.has_unfinished_requests()

    def _add(self, new: NewRequest) -> int:
        """Queues a broadcast request on this rank; returns its request id."""
        return self.llm.add_request(new.prompt, new.params)

    def _collect_handoff(self, commands: Commands) -> None:
        """Rank 0: the role's decisions, into commands.handoff."""

    def _apply_handoff(self, commands: Commands) -> list[tuple[int, Delta]]:
        """Every rank: carries out commands.handoff; the Deltas of what it ended or started."""
        return []

    def _after_step(self, deltas: list[tuple[int, Delta]]) -> list[tuple[int, Delta]]:
        """Every rank, every iteration: the role's own progress (collective); may amend the Deltas."""
        return deltas

    def _step(self) -> list[tuple[int, Delta]]:
        deltas = []
        for out in self.llm.step():
            key = self._keys.get(out.request_id)
            if key is None:
                continue
            if out.finished:
                del self._rids[key], self._keys[out.request_id]
            if self.client is not None:
                deltas.append((key, self._delta(key, out)))
        return deltas

    def _delta(self, key: int, out: RequestOutput) -> Delta:
        """Rank 0: what out gained since the last Delta of this key."""
        prog = self._progress[key]
        text = out.text or ""
        delta = Delta(
            token_ids=out.token_ids[prog.tokens :],
            text=text[prog.text :],
            logprobs=(out.logprobs or [])[prog.tokens :],
            completion_tokens=len(out.token_ids),
            finish_reason=out.finish_reason,
            stop_reason=out.stop_reason,
            error=out.error,
        )
        prog.tokens, prog.text = len(out.token_ids), len(text)
        return delta

    def _publish(self, deltas: list[tuple[int, Delta]]) -> None:
        """Rank 0: hands the Deltas to the HTTP side and records latencies."""
        if self.client is None:
            return
        now, ttft, itl, new_tokens = time.monotonic(), [], [], 0
        for key, delta in deltas:
            prog = self._progress[key]
            n = len(delta.token_ids)
            if n:
                new_tokens += n
                (itl if prog.last_token else ttft).append(now - (prog.last_token or prog.arrival))
                prog.last_token = now
            if delta.finished:
                del self._progress[key]
                self.metrics.record_request(prog.prompt_tokens, delta.finish_reason)
        self.metrics.record_tokens(ttft, itl, new_tokens)
        self.client.publish(deltas)

"""Rank 0's bridge between the HTTP server (an asyncio event loop in its own thread) and the engine loop
(the main thread), in both directions, without either ever waiting on the other.

HTTP -> engine: submit() and abort() put commands on a thread-safe queue; the engine loop takes them all
before each step (take()), blocking only while it has nothing to do.

Engine -> HTTP: after each step the loop hands every request's news (a Delta) over with one
``loop.call_soon_threadsafe``; they land in the request's asyncio.Queue. A client that reads slowly never
stalls the engine: its queue grows by at most one Delta per token, so it is bounded by the request's own
max_tokens (+1 for the end), and its request decodes to the end at the engine's pace (the KV blocks are
freed then). A client that goes away is aborted (the handler calls abort()), which frees its KV blocks on
every rank at the next step.

Admission: at most max_waiting requests may wait for KV blocks (submitted and not yet running); beyond
that submit() refuses with 429. While draining (shutdown), submit() refuses with 503.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import time
from dataclasses import dataclass

from helix.generate import SamplingParams, TokenLogprobs
from helix.serve.protocol import ApiError

__all__ = ["Delta", "EngineClient"]


@dataclass(frozen=True)
class Delta:
    """What one step added to a request (engine -> HTTP)."""

    token_ids: list[int]
    text: str
    logprobs: list[TokenLogprobs]
    completion_tokens: int  # tokens generated so far
    finish_reason: str | None = None  # the engine's: eos, stop, length, aborted, refused
    stop_reason: str | int | None = None
    error: str | None = None  # why it was refused or failed
    error_status: int = 400  # the HTTP status of a refused request
    kv_transfer: dict | None = None  # disaggregated roles: the hand-off's facts, in the response

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class Submission:
    key: int
    prompt: list[int]
    params: SamplingParams
    arrival: float  # time.monotonic() when it was submitted
    handoff: object | None = None  # disaggregated roles: what the engine loop does with the KV


class EngineClient:
    """See the module docstring. submit/abort/bind run on the HTTP event loop; take/publish on the engine
    loop's thread; begin_drain anywhere (a signal handler)."""

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()  # Submission | ("abort", key) | None (wake)
        self._keys = itertools.count()
        self._streams: dict[int, asyncio.Queue[Delta]] = {}  # the event loop's only
        self._loop: asyncio.AbstractEventLoop | None = None
        self.unfinished = 0  # submitted and not finished; the event loop's only
        self.running = 0  # requests running in the engine, set by the engine loop after each step
        self.draining = False

    # ---- the HTTP side (event loop thread)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def submit(
        self, prompt: list[int], params: SamplingParams, handoff: object | None = None
    ) -> tuple[int, asyncio.Queue[Delta]]:
        """Queues a request; returns its key and the queue its Deltas arrive on (the last one finished)."""
        if self.draining:
            raise ApiError(503, "the server is shutting down")
        waiting = self.unfinished - self.running
        if waiting >= self.max_waiting:
            raise ApiError(
                429, f"too many requests waiting ({waiting}, --max-waiting {self.max_waiting}); retry later"
            )
        key = next(self._keys)
        stream: asyncio.Queue[Delta] = asyncio.Queue()
        self._streams[key] = stream
        self.unfinished += 1
        self._inbox.put(Submission(key, prompt, params, time.monotonic(), handoff))
        return key, stream

    def abort(self, key: int) -> None:
        """Cancels a request (its client went away); a no-op once it has finished."""
        if key in self._streams:
            self._inbox.put(("abort", key))

    def _deliver(self, deltas: list[tuple[int, Delta]]) -> None:
        for key, delta in deltas:
            stream = self._streams.get(key)
            if stream is None:
                continue
            stream.put_nowait(delta)
            if delta.finished:
                del self._streams[key]
                self.unfinished -= 1

    # ---- the engine side (main thread)

    def take(self, block: bool, timeout: float = 0.5) -> tuple[list[Submission], list[int]]:
        """Everything queued since the last call: (submissions, aborted keys). With block, waits up to
        timeout for the first one (the loop is idle)."""
        items = []
        if block:
            try:
                items.append(self._inbox.get(timeout=timeout))
            except queue.Empty:
                pass
        while True:
            try:
                items.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        adds = [s for s in items if isinstance(s, Submission)]
        aborts = [s[1] for s in items if isinstance(s, tuple)]
        return adds, aborts

    def publish(self, deltas: list[tuple[int, Delta]]) -> None:
        if not deltas or self._loop is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._deliver, deltas)
        except RuntimeError:  # the event loop has closed (shutdown): nobody is left to tell
            pass

    def wake(self) -> None:
        """Wake the engine loop if it waits for news (thread-safe)."""
        self._inbox.put(None)

    def begin_drain(self) -> None:
        """Refuse new requests from now on and wake the engine loop (safe in a signal handler)."""
        self.draining = True
        self._inbox.put(None)

"""``helix serve --role context``: prefill only. Every request runs its prompt and samples one token; its
sequence is then kept (the KV stays in the pools, which every context rank registered with NIXL at start)
and the answer carries a handle to it (``kv_transfer_params.handle``). A generation server claims the
handle (POST /v1/kv/claim: the layout, the blocks of the sequence on every CP rank and the NIXL agents),
reads the rows it owns in place, and releases it (POST /v1/kv/release); a handle not released within
twice --handoff-timeout of its claim (or not claimed within --handoff-timeout) is freed. A handle is
claimed once: unknown, released, expired or reused handles are refused (404, 409).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from helix.disagg.handoff import HandoffSpec, KVSource
from helix.disagg.offline import layout_of
from helix.serve.channel import Commands, NewRequest
from helix.serve.client import Delta
from helix.serve.engine_loop import EngineLoop
from helix.serve.prepare import PreparedRequest
from helix.serve.protocol import ApiError

__all__ = ["ContextLoop", "ContextRole", "register_sources"]

EXPORT = "export"  # the NewRequest.handoff of a context request


def register_sources(llm, channel, name: str) -> tuple[object | None, list | None]:
    """Collective at start: TP rank 0 of every CP rank registers its KV pools with a NIXL agent. Returns
    (this rank's KVAgent or None, rank 0: [(agent name, metadata, pool addresses)] by CP rank, else None)."""
    eng = llm.engine
    agent = mine = None
    if eng.rank < eng.cp:  # rank = tp_rank * cp + cp_rank: ranks [0, cp) are TP rank 0
        from helix.disagg.agent import KVAgent

        agent = KVAgent(f"{name}-r{eng.rank}")
        pools = eng.kv_pool_addresses()
        pool_bytes = eng.num_kv_blocks * eng.tokens_per_block * eng.kv_row_bytes
        agent.register([(a, pool_bytes) for a in pools])  # for the server's life
        mine = (agent.name, agent.metadata(), pools)
    got = channel.gather_objects(mine)
    return agent, (got[: eng.cp] if got else None)


@dataclasses.dataclass
class _Export:
    spec: dict  # HandoffSpec.to_json() less context_url
    request_id: int
    deadline: float
    claimed: bool = False


class ContextRole:
    """Rank 0's registry of exported requests, shared by the HTTP side (claim, release) and the loop."""

    def __init__(self, handoff_timeout: float, wake) -> None:
        self.timeout = handoff_timeout
        self.wake = wake  # wakes the engine loop (EngineClient.wake)
        self._lock = threading.Lock()
        self._exports: dict[str, _Export] = {}
        self._freed: list[int] = []  # request ids to release at the next iteration

    async def admit(self, req, prepared: PreparedRequest) -> tuple[PreparedRequest, str]:
        params = dataclasses.replace(prepared.params, max_new_tokens=1)  # prefill and the first token
        return PreparedRequest(prepared.prompt, params), EXPORT

    def add(self, spec: dict, request_id: int) -> None:
        with self._lock:
            self._exports[spec["handle"]] = _Export(spec, request_id, time.monotonic() + self.timeout)

    def claim(self, handle: str) -> dict:
        with self._lock:
            exp = self._exports.get(handle)
            if exp is None:
                raise ApiError(
                    404, f"unknown KV handle {handle!r} (never issued, released or expired)", "handle"
                )
            if exp.claimed:
                raise ApiError(409, f"KV handle {handle!r} was already claimed", "handle")
            exp.claimed = True
            exp.deadline = time.monotonic() + 2 * self.timeout  # outlives any pull of the claimer
        self.wake()  # the loop progresses the READs from now on
        print(f"helix serve: KV handle {handle} claimed", flush=True)
        return exp.spec

    def release(self, handle: str) -> None:
        with self._lock:
            exp = self._exports.pop(handle, None)
            if exp is None:
                raise ApiError(
                    404, f"unknown KV handle {handle!r} (never issued, released or expired)", "handle"
                )
            self._freed.append(exp.request_id)
        self.wake()

    def take_freed(self) -> list[int]:
        """Released and expired requests since the last call."""
        now = time.monotonic()
        with self._lock:
            for handle in [h for h, e in self._exports.items() if e.deadline <= now]:
                self._freed.append(self._exports.pop(handle).request_id)
            freed, self._freed = self._freed, []
        return freed

    @property
    def busy(self) -> bool:
        """Whether a claimed handle's rows are being read (the ranks must progress), or a release or an
        expiry waits to be applied."""
        now = time.monotonic()
        with self._lock:
            return bool(self._freed) or any(e.claimed or e.deadline <= now for e in self._exports.values())

    def add_routes(self, app: FastAPI) -> None:
        @app.post("/v1/kv/claim")
        async def claim(request: Request) -> JSONResponse:
            return JSONResponse(self.claim(await _handle_of(request)))

        @app.post("/v1/kv/release")
        async def release(request: Request) -> JSONResponse:
            self.release(await _handle_of(request))
            return JSONResponse({})


async def _handle_of(request: Request) -> str:
    try:
        handle = (await request.json())["handle"]
    except (ValueError, KeyError, TypeError):
        raise ApiError(400, 'the body must be {"handle": "..."}', "handle") from None
    if not isinstance(handle, str):
        raise ApiError(400, "handle must be a string", "handle")
    return handle


class ContextLoop(EngineLoop):
    """The engine loop of a context server: keeps every request's sequence when it finishes, gathers its
    blocks from the CP ranks and (rank 0) issues the handle in the request's last Delta."""

    def __init__(
        self, llm, channel, agent, sources, fingerprint: str, role: ContextRole | None = None, **kw
    ) -> None:
        super().__init__(llm, channel, **kw)
        self.role = role
        self.agent = agent  # this rank's KVAgent (TP rank 0 of each CP rank), else None
        self.sources = sources  # rank 0: [(agent, metadata, pool addresses)] by CP rank
        self.fingerprint = fingerprint
        self._exports: dict[int, tuple[int, int]] = {}  # request id -> (key, seed): KV kept when done

    def _busy(self) -> bool:
        return super()._busy() or (self.role is not None and self.role.busy)

    def _add(self, new: NewRequest) -> int:
        rid = super()._add(new)
        self.llm.scheduler.keep_kv.add(rid)
        self._exports[rid] = (new.key, new.params.seed)
        return rid

    def _collect_handoff(self, commands: Commands) -> None:
        commands.handoff += [("release", rid) for rid in self.role.take_freed()]

    def _apply_handoff(self, commands: Commands) -> list[tuple[int, Delta]]:
        for _, rid in commands.handoff:
            self.llm.scheduler.release(rid)
        return []

    def _after_step(self, deltas: list[tuple[int, Delta]]) -> list[tuple[int, Delta]]:
        if self.agent is not None:
            self.agent.progress()  # serves the READs of generation ranks (UCX needs the target's progress)
        if self.role is not None and not self.llm.scheduler.num_running and self.role.busy:
            time.sleep(0.0005)  # only hand-offs to serve: poll, but leave the core to the others
        done = sorted(rid for rid in self._exports if rid not in self._keys)  # finished (the same everywhere)
        if not done:
            return deltas
        sched, eng = self.llm.scheduler, self.llm.engine
        kept = {}  # request id -> (seq id, output, key, seed)
        for rid in done:
            key, seed = self._exports.pop(rid)
            try:
                kept[rid] = (*sched.kv_sequence(rid), key, seed)
            except ValueError:  # refused: nothing was kept
                sched.keep_kv.discard(rid)
                continue
        blocks = {rid: eng.block_table.block_table(k[0]).tolist() for rid, k in kept.items()}
        gathered = self.channel.gather_objects(blocks if eng.rank < eng.cp else None)
        if self.client is None:
            return deltas
        handles = {key: self._issue(rid, out, seed, gathered) for rid, (_, out, key, seed) in kept.items()}
        return [
            (k, dataclasses.replace(d, kv_transfer={"handle": handles[k]}) if k in handles else d)
            for k, d in deltas
        ]

    def _issue(self, rid: int, out, seed: int, gathered: list) -> str:
        """Rank 0: the handle of a finished request, registered with the role."""
        eng = self.llm.engine
        sources = [
            KVSource(name, meta, pools, gathered[c][rid])
            for c, (name, meta, pools) in enumerate(self.sources)
        ]
        spec = HandoffSpec(
            secrets.token_hex(16),
            "",
            self.fingerprint,
            eng.dtype,
            eng.config.num_hidden_layers,
            eng.kv_row_bytes,
            layout_of(eng),
            list(out.prompt_token_ids),
            list(out.token_ids),
            seed,
            sources,
            None if out.logprobs is None else list(out.logprobs),
        )
        self.role.add(spec.to_json(), rid)
        return spec.handle

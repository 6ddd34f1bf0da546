"""``helix serve --role generation``: decodes requests whose prompt KV a context server computed.

A request arrives (from the router) with ``kv_transfer_params: {context_url, handle}``. Rank 0's HTTP side
claims the handle from the context server (the layout, blocks and NIXL agents of the KV), checks that the
model, KV dtype and prompt match, and submits it. Then, in the engine loop (DESIGN.md §4):

- every rank reserves the request's blocks (Scheduler.begin_import) and posts NIXL READs of exactly the
  rows it owns under this server's layout (helix.disagg.handoff.plan_reads) into a receive buffer;
- the running requests keep stepping meanwhile; each iteration every rank polls its READs and rank 0
  gathers the states;
- when every rank is done, rank 0 broadcasts "ready" and every rank imports the rows as one step at the
  same iteration (Scheduler.finish_import); the request's first Delta carries its tokens so far and the
  bytes each rank received;
- when a rank's READs fail (the context server died) or --handoff-timeout passes, rank 0 broadcasts
  "failed": every rank drops the request and its blocks, and the client gets a 502 naming the cause.

Either way rank 0 then releases the handle on the context server (in the background).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
import time
import urllib.error
import urllib.request

import numpy as np

from helix.disagg.handoff import HandoffSpec, plan_reads
from helix.disagg.offline import kv_dtype, layout_of
from helix.serve.channel import Commands, NewRequest
from helix.serve.client import Delta
from helix.serve.engine_loop import EngineLoop
from helix.serve.prepare import PreparedRequest
from helix.serve.protocol import ApiError

__all__ = ["GenerationLoop", "GenerationRole", "post_json"]

# Tests only: seconds every generation rank waits after a claim before it posts its READs (a window in
# which a test kills the context server, to fail the hand-off mid-way).
DELAY_ENV = "HELIX_TEST_HANDOFF_DELAY_S"


def post_json(url: str, body: dict, timeout: float) -> dict:
    """POST a JSON body; the JSON answer. urllib.error.HTTPError / URLError as urllib raises them."""
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _release_later(spec: HandoffSpec) -> None:
    """Frees the handle on the context server, in the background (best effort: it expires otherwise)."""

    def release() -> None:
        try:
            post_json(spec.context_url + "/v1/kv/release", {"handle": spec.handle}, 10)
        except (OSError, ValueError):
            pass

    threading.Thread(target=release, name="helix-kv-release", daemon=True).start()


class GenerationRole:
    """Rank 0's HTTP side: claims each request's KV from its context server before submitting it."""

    def __init__(self, llm, fingerprint: str, handoff_timeout: float) -> None:
        eng = llm.engine
        self.fingerprint = fingerprint
        self.timeout = handoff_timeout
        self.expect = (eng.dtype, eng.config.num_hidden_layers, eng.kv_row_bytes)

    async def admit(self, req, prepared: PreparedRequest) -> tuple[PreparedRequest, HandoffSpec]:
        params = req.kv_transfer_params or {}
        url, handle = params.get("context_url"), params.get("handle")
        if not isinstance(url, str) or not isinstance(handle, str):
            raise ApiError(
                400,
                "a generation server decodes requests handed over by a context server: kv_transfer_params "
                "needs context_url and handle (send requests to the router: python -m helix router)",
                "kv_transfer_params",
            )
        spec = await asyncio.to_thread(self._claim, url.rstrip("/"), handle)
        print(f"helix serve: KV handle {handle} claimed from {spec.context_url}", flush=True)
        if spec.prompt_token_ids != prepared.prompt:
            raise ApiError(400, "the prompt is not the one the context server prefilled", "prompt")
        if len(spec.token_ids) >= prepared.params.max_new_tokens:
            raise ApiError(400, "the context server already generated every token asked for", "max_tokens")
        return PreparedRequest(prepared.prompt, dataclasses.replace(prepared.params, seed=spec.seed)), spec

    def _claim(self, url: str, handle: str) -> HandoffSpec:
        try:
            got = post_json(url + "/v1/kv/claim", {"handle": handle}, self.timeout)
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = str(exc)
            raise ApiError(exc.code, f"context server {url}: {message}", "kv_transfer_params") from None
        except (OSError, ValueError) as exc:
            raise ApiError(502, f"context server {url} unreachable: {exc}", "kv_transfer_params") from None
        spec = HandoffSpec.from_json({**got, "context_url": url})
        if spec.fingerprint != self.fingerprint:
            raise ApiError(400, f"context server {url} serves another model (fingerprints differ)", "model")
        if (spec.dtype, spec.num_layers, spec.row_bytes) != self.expect:
            raise ApiError(
                400,
                f"context server {url} keeps {spec.num_layers} layers of {spec.row_bytes}-byte {spec.dtype} "
                f"KV rows; this server {self.expect[1]} of {self.expect[2]}-byte {self.expect[0]}",
                "kv_transfer_params",
            )
        return spec

    def add_routes(self, app) -> None:
        pass


@dataclasses.dataclass
class _Import:
    """One rank's side of a request's hand-off."""

    spec: HandoffSpec
    buffer: np.ndarray  # [num_layers, n, row bytes] uint8: the rows this rank owns, ascending positions
    reads: dict  # helix.disagg.handoff.plan_reads
    post_at: float
    pull: object | None = None  # helix.disagg.agent.Pull once posted

    def poll(self, agent) -> str:
        if self.pull is None:
            if time.monotonic() < self.post_at:
                return "PROC"
            if self.buffer.shape[1] == 0:  # this rank owns none of the positions
                return "DONE"
            self.pull = agent.pull(self.buffer, self.reads)
        return self.pull.poll()

    def release(self) -> None:
        if self.pull is not None:
            self.pull.release()


class GenerationLoop(EngineLoop):
    """The engine loop of a generation server: imports handed-over requests (see the module docstring)."""

    def __init__(self, llm, channel, agent, handoff_timeout: float, **kw) -> None:
        super().__init__(llm, channel, **kw)
        self.agent = agent  # this rank's helix.disagg.agent.KVAgent
        self.timeout = handoff_timeout
        self.delay = float(os.environ.get(DELAY_ENV, "0"))
        self._imports: dict[int, _Import] = {}  # request id -> import in flight (every rank)
        self._deadlines: dict[int, float] = {}  # rank 0: request id -> when it fails
        self._decided: list[tuple] = []  # rank 0: ("ready", rid) / ("failed", rid, why) to broadcast

    def _busy(self) -> bool:
        return super()._busy() or bool(self._imports)

    def _add(self, new: NewRequest) -> int:
        from helix import KVCacheFullError

        spec: HandoffSpec = new.handoff
        try:
            rid = self.llm.begin_import(
                spec.prompt_token_ids, spec.token_ids, new.params, new.params.seed, spec.token_logprobs
            )
        except KVCacheFullError as exc:  # the same on every rank
            _release_later(spec)
            raise ValueError(f"no KV blocks free for the handed-over request now: {exc}") from None
        eng = self.llm.engine
        n, reads = plan_reads(spec, layout_of(eng), eng.rank % eng.cp)
        buffer = np.empty((spec.num_layers, n, spec.row_bytes), np.uint8)
        self._imports[rid] = _Import(spec, buffer, reads, time.monotonic() + self.delay)
        self._deadlines[rid] = time.monotonic() + self.timeout
        return rid

    def _after_step(self, deltas: list[tuple[int, Delta]]) -> list[tuple[int, Delta]]:
        for rid in [r for r in self._imports if r not in self._keys]:  # aborted meanwhile
            self._imports.pop(rid).release()
            self._deadlines.pop(rid, None)
        if not self._imports:
            return deltas
        states = {rid: imp.poll(self.agent) for rid, imp in self._imports.items()}
        gathered = self.channel.gather_objects(states)
        if self.client is not None:
            self._decide(gathered)
        if not self.llm.scheduler.num_running:
            time.sleep(0.001)  # only hand-offs in flight: poll, but leave the core to the others
        return deltas

    def _decide(self, gathered: list[dict[int, str]]) -> None:
        """Rank 0: ready when every rank is done, failed at the first error or at the deadline."""
        decided = {d[1] for d in self._decided}
        now = time.monotonic()
        for rid in sorted(self._imports):
            if rid in decided:
                continue
            errors = [f"rank {r}: {s[rid]}" for r, s in enumerate(gathered) if s[rid].startswith("ERR")]
            if errors:
                self._decided.append(("failed", rid, errors[0]))
            elif all(s[rid] == "DONE" for s in gathered):
                self._decided.append(("ready", rid))
            elif now >= self._deadlines[rid]:
                self._decided.append(
                    ("failed", rid, f"timed out after {self.timeout:g} s (--handoff-timeout)")
                )

    def _collect_handoff(self, commands: Commands) -> None:
        commands.handoff, self._decided = self._decided, []

    def _apply_handoff(self, commands: Commands) -> list[tuple[int, Delta]]:
        deltas = []
        for decision in commands.handoff:
            rid = decision[1]
            imp = self._imports.pop(rid)
            self._deadlines.pop(rid, None)
            key = self._keys[rid]
            if decision[0] == "ready":
                spec = imp.spec
                dtype = np.dtype(kv_dtype(spec.dtype))
                shape = (spec.num_layers, imp.buffer.shape[1], spec.row_bytes // dtype.itemsize)
                rows = imp.buffer.view(dtype).reshape(shape)  # [L, n, D]
                out = self.llm.finish_import(rid, rows)
                imp.release()
                received = self.channel.gather_objects(int(imp.buffer.nbytes))
                if self.client is not None:
                    delta = dataclasses.replace(
                        self._delta(key, out), kv_transfer={"bytes_per_rank": received}
                    )
                    deltas.append((key, delta))
            else:
                imp.release()
                self.llm.abort_request(rid)
                del self._rids[key], self._keys[rid]
                if self.client is not None:
                    why = f"the KV hand-off from {imp.spec.context_url} failed: {decision[2]}"
                    deltas.append((key, Delta([], "", [], 0, "refused", error=why, error_status=502)))
            if self.client is not None:
                _release_later(imp.spec)
        return deltas

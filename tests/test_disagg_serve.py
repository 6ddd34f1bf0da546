"""Disaggregated serving end to end on loopback: router -> context server (prefill, cp1 / cp2 / tp2) ->
generation server (Helix decode, cp2 / cp3 / tp2cp2, tokens_per_block unlike the context's), the KV moved
by NIXL and re-sharded on the way. Greedy answers must equal `helix generate`'s (and the aggregated
server's) under the generation layout, each generation rank must receive exactly the bytes of the rows it
owns, and every KV block must be free afterwards; then the faults: unknown and reused handles, a context
server killed mid-hand-off, a hand-off that times out.

The servers are shared by the tests of this module (started once, in parallel); the model is the tiny
one with 12 heads (tests/disagg_support.py).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from disagg_support import RouterProcess, kv_blocks_used, make_disagg_model, post, wait_blocks_free
from helix.disagg.layout import KVLayout, owned_count
from mpi_launch import run_mpi
from serve_support import ServerProcess

pytestmark = pytest.mark.mpi
pytest.importorskip("nixl_cu13", reason="NIXL (requirements/disagg.txt) moves the KV")

NEW_TOKENS = 8
COMMON = ["--max-tokens", "512", "--max-batch-tokens", "64"]
# name: (tp, cp, tokens_per_block)
CONTEXTS = {"cp1": (1, 1, 4), "cp2": (1, 2, 4), "tp2": (2, 1, 5)}
GENERATIONS = {"cp2": (1, 2, 3), "cp3": (1, 3, 3), "tp2cp2": (2, 2, 2)}
PAIRS = [("cp1", "cp2"), ("cp2", "cp3"), ("tp2", "tp2cp2")]
# 1 token: less than one block of any layout; 3: less than cp x tokens_per_block of every generation
# layout; 5: less than cp x tokens_per_block of cp2 and cp3; 40: many blocks everywhere.
PROMPTS = [[17], [5, 900, 33], [11, 12, 13, 14, 15], [(7 * i + 3) % 990 + 6 for i in range(40)]]
ROW_BYTES, NUM_LAYERS = (64 + 16) * 4, 4  # the tiny model's kv_lora_rank + rope dim, float32


def flags(tp: int, cp: int, tpb: int) -> list[str]:
    return ["--tp", str(tp), "--cp", str(cp), "--tokens-per-block", str(tpb), *COMMON]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_disagg_model(tmp_path_factory.mktemp("disagg") / "tiny12")


@pytest.fixture(scope="module")
def reference(model) -> dict[str, list[list[int]]]:
    """`helix generate`'s greedy tokens for every prompt under every generation layout."""
    out = {}
    for name, (tp, cp, tpb) in GENERATIONS.items():
        args = [
            "-m",
            "helix",
            "generate",
            "--model",
            str(model),
            *flags(tp, cp, tpb),
            "--json",
            "--ignore-eos",
        ]
        args += ["--max-new-tokens", str(NEW_TOKENS)]
        for p in PROMPTS:
            args += ["--prompt-token-ids", ",".join(map(str, p))]
        result = run_mpi(tp * cp, args, timeout=240)
        assert result.returncode == 0, result.describe()
        out[name] = [o["token_ids"] for o in json.loads(result.output.strip().splitlines()[-1])["outputs"]]
    return out


def start(model, tmp, name, layout, role, env=None, extra=()) -> ServerProcess:
    tp, cp, tpb = layout
    args = ["--model", str(model), *flags(tp, cp, tpb), "--role", role, *extra]
    return ServerProcess(tp * cp, args, tmp / f"{name}.log", env=env)


@pytest.fixture(scope="module")
def servers(model, tmp_path_factory):
    """{"ctx-NAME", "gen-NAME", "aggregated", "router-CTX-GEN"}: every server of the module, ready."""
    tmp = tmp_path_factory.mktemp("disagg_logs")
    procs = {f"ctx-{n}": start(model, tmp, f"ctx-{n}", lay, "context") for n, lay in CONTEXTS.items()}
    procs |= {f"gen-{n}": start(model, tmp, f"gen-{n}", lay, "generation") for n, lay in GENERATIONS.items()}
    procs["aggregated"] = start(model, tmp, "aggregated", GENERATIONS["cp3"], "aggregated")
    routers = {}
    try:
        for p in procs.values():
            p.wait_ready(timeout_s=180)
        for c, g in PAIRS:
            r = routers[f"router-{c}-{g}"] = RouterProcess(
                [procs[f"ctx-{c}"].url], [procs[f"gen-{g}"].url], tmp / f"router-{c}-{g}.log"
            )
            r.wait_ready()
        yield procs | routers
    finally:
        for p in [*routers.values(), *procs.values()]:
            p.stop()


def complete(url: str, prompt: list[int], **extra) -> tuple[int, dict]:
    body = {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True}
    return post(url + "/v1/completions", {**body, "return_token_ids": True, **extra})


def expected_bytes(layout: tuple[int, int, int], prompt_len: int) -> list[int]:
    """The bytes of the rows every generation rank owns: positions [0, prompt_len), every layer."""
    tp, cp, tpb = layout
    kv = KVLayout(tp, cp, tpb)
    return [owned_count(kv, prompt_len, r % cp) * NUM_LAYERS * ROW_BYTES for r in range(tp * cp)]


@pytest.mark.parametrize("pair", PAIRS, ids=[f"{c}-to-{g}" for c, g in PAIRS])
def test_router_greedy_tokens_equal_helix_generate(servers, reference, pair):
    """Through the router, every prompt length gives `helix generate`'s tokens under the generation
    layout, streamed or not; each generation rank received exactly its rows' bytes."""
    ctx, gen = pair
    router = servers[f"router-{ctx}-{gen}"]
    for i, prompt in enumerate(PROMPTS):
        status, got = complete(router.url, prompt)
        assert status == 200, got
        assert got["choices"][0]["token_ids"] == reference[gen][i], f"prompt {i}"
        assert got["usage"]["completion_tokens"] == NEW_TOKENS
        assert got["kv_transfer_params"]["bytes_per_rank"] == expected_bytes(GENERATIONS[gen], len(prompt))
    status, body = _stream(router.url, PROMPTS[-1])
    assert status == 200
    chunks = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == reference[gen][-1]
    assert body.rstrip().endswith("data: [DONE]")


def _stream(url: str, prompt: list[int]) -> tuple[int, str]:
    import urllib.request

    body = {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "ignore_eos": True, "stream": True}
    body["return_token_ids"] = True
    req = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=120) as resp:
        return resp.status, resp.read().decode()


def test_aggregated_server_agrees(servers, reference):
    """The aggregated server (the default role) gives the same tokens as the disaggregated path."""
    for i, prompt in enumerate(PROMPTS):
        status, got = complete(servers["aggregated"].url, prompt)
        assert status == 200 and got["choices"][0]["token_ids"] == reference["cp3"][i]
        assert "kv_transfer_params" not in got


def test_logprobs_of_every_token_come_through_the_router(servers):
    """logprobs=2 through router -> context -> generation: one entry per token, the context's first one
    included, equal to the aggregated server's (same generation layout) within float32 rounding."""
    prompt = PROMPTS[-1]
    _, direct = complete(servers["aggregated"].url, prompt, logprobs=2)
    status, routed = complete(servers["router-cp2-cp3"].url, prompt, logprobs=2)
    assert status == 200, routed
    want, got = direct["choices"][0]["logprobs"], routed["choices"][0]["logprobs"]
    assert len(got["token_logprobs"]) == len(got["top_logprobs"]) == NEW_TOKENS
    assert got["token_logprobs"] == pytest.approx(want["token_logprobs"], abs=1e-4)


def test_decoding_goes_on_while_kv_arrives(servers, reference):
    """12 concurrent requests through one router: imports land between the steps of the running ones,
    every answer is its reference, and then every block of both servers is free."""
    router = servers["router-cp2-cp3"]
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda p: complete(router.url, p), jobs))
    for i, (status, answer) in enumerate(got):
        assert status == 200, answer
        assert answer["choices"][0]["token_ids"] == reference["cp3"][i % len(PROMPTS)]
    wait_blocks_free(servers["gen-cp3"])
    wait_blocks_free(servers["ctx-cp2"])


def test_every_block_free_afterwards(servers):
    for name, proc in servers.items():
        if name.startswith(("ctx-", "gen-", "aggregated")):
            wait_blocks_free(proc)


def test_handles_unknown_reused_or_missing_are_refused(servers):
    ctx, gen = servers["ctx-cp1"], servers["gen-cp2"]
    status, err = complete(
        gen.url, PROMPTS[1], kv_transfer_params={"context_url": ctx.url, "handle": "0" * 32}
    )
    assert status == 404 and "unknown KV handle" in err["error"]["message"]
    status, err = complete(gen.url, PROMPTS[1])
    assert status == 400 and err["error"]["param"] == "kv_transfer_params"
    status, answer = complete(ctx.url, PROMPTS[1])
    assert status == 200 and answer["usage"]["completion_tokens"] == 1  # prefill and the first token
    handle = answer["kv_transfer_params"]["handle"]
    assert post(ctx.url + "/v1/kv/claim", {"handle": handle})[0] == 200
    status, err = post(ctx.url + "/v1/kv/claim", {"handle": handle})
    assert status == 409 and "already claimed" in err["error"]["message"]
    assert post(ctx.url + "/v1/kv/release", {"handle": handle})[0] == 200
    assert post(ctx.url + "/v1/kv/release", {"handle": handle})[0] == 404
    status, err = complete(gen.url, PROMPTS[1], kv_transfer_params={"context_url": ctx.url, "handle": handle})
    assert status == 404
    wait_blocks_free(ctx)
    wait_blocks_free(gen)


@pytest.fixture(scope="module")
def fault_servers(model, tmp_path_factory):
    """A context server to kill, a generation server that waits 2 s before it pulls (the window), and one
    that waits 3 s with a 1 s hand-off timeout."""
    tmp = tmp_path_factory.mktemp("disagg_fault_logs")
    procs = {
        "victim": start(model, tmp, "victim", (1, 1, 4), "context"),
        "slow": start(
            model, tmp, "slow", (1, 2, 3), "generation", {"HELIX_TEST_HANDOFF_DELAY_S": "2"},
            ["--max-tokens", "2048"],
        ),
        "late": start(
            model, tmp, "late", (1, 1, 3), "generation", {"HELIX_TEST_HANDOFF_DELAY_S": "3"},
            ["--handoff-timeout", "1"],
        ),
    }  # fmt: skip
    try:
        for p in procs.values():
            p.wait_ready(timeout_s=180)
        yield procs
    finally:
        for p in procs.values():
            p.stop()


def _handoff(ctx, gen, prompt) -> tuple[int, dict]:
    """What the router does: prefill on ctx, then decode on gen with the handle."""
    status, answer = complete(ctx.url, prompt)
    assert status == 200, answer
    params = {"context_url": ctx.url, "handle": answer["kv_transfer_params"]["handle"]}
    return complete(gen.url, prompt, kv_transfer_params=params)


def _stream_handoff(ctx, gen, prompt, max_tokens: int, chunks: list) -> None:
    """A streamed hand-off from ctx to gen; appends (arrival time, token ids) of every chunk to chunks."""
    status, answer = complete(ctx.url, prompt)
    assert status == 200, answer
    params = {"context_url": ctx.url, "handle": answer["kv_transfer_params"]["handle"]}
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True}
    body |= {"return_token_ids": True, "kv_transfer_params": params}
    conn = http.client.HTTPConnection(gen.host, gen.port, timeout=120)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
        for line in conn.getresponse():
            if line.startswith(b"data: {"):
                chunks.append((time.monotonic(), json.loads(line[6:])["choices"][0]["token_ids"]))
    finally:
        conn.close()


def test_context_killed_mid_handoff(servers, fault_servers, reference):
    """The context server dies after the claim, before the READs: that request fails with a 502 naming the
    hand-off, while a request already decoding on the same generation server keeps getting tokens (during
    the hand-off and after its failure) and ends with the right ones; every block is free after."""
    victim, slow = fault_servers["victim"], fault_servers["slow"]
    chunks: list = []
    survivor = threading.Thread(
        target=_stream_handoff, args=(servers["ctx-cp1"], slow, PROMPTS[-1], 300, chunks), daemon=True
    )
    survivor.start()
    deadline = time.monotonic() + 60
    while not chunks:  # decoding (after its own 2 s wait for the READs)
        assert time.monotonic() < deadline and survivor.is_alive()
        time.sleep(0.01)
    status, answer = complete(victim.url, PROMPTS[-1])
    assert status == 200
    failed = {}
    params = {"context_url": victim.url, "handle": answer["kv_transfer_params"]["handle"]}
    t = threading.Thread(
        target=lambda: failed.update(got=complete(slow.url, PROMPTS[-1], kv_transfer_params=params)),
        daemon=True,
    )
    t.start()
    while f"{params['handle']} claimed" not in slow.log():  # the claim is answered, the READs not posted
        assert time.monotonic() < deadline
        time.sleep(0.01)
    claimed = time.monotonic()
    os.killpg(victim.proc.pid, signal.SIGKILL)  # `timeout` leads the job's process group: every rank
    t.join(60)
    failed_at = time.monotonic()
    survivor.join(120)
    status, err = failed["got"]
    assert status == 502, err
    assert "KV hand-off" in err["error"]["message"] and victim.url in err["error"]["message"]
    tokens = [tok for _, ids in chunks for tok in ids]
    assert len(tokens) == 300 and tokens[:NEW_TOKENS] == reference["cp2"][-1]
    during = [at for at, _ in chunks if claimed < at < failed_at]
    assert len(during) >= 5, f"{len(during)} tokens of the running request while the hand-off was in flight"
    wait_blocks_free(slow)


def test_handoff_times_out(servers, fault_servers):
    """READs not done within --handoff-timeout: a 502 that says so, the blocks freed, the handle released
    on the context server."""
    late, ctx = fault_servers["late"], servers["ctx-cp1"]
    t0 = time.monotonic()
    status, err = _handoff(ctx, late, PROMPTS[2])
    assert status == 502 and "timed out after 1 s" in err["error"]["message"]
    assert time.monotonic() - t0 < 30
    wait_blocks_free(late)
    wait_blocks_free(ctx)
    assert kv_blocks_used(late) == [0]

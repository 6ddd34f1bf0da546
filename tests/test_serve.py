"""`helix serve` end to end, queried as users query it: the `openai` client, raw HTTP and curl, against a
server that the test starts under mpiexec on a free loopback port (cp2 on 2 ranks, tp2cp2 on 4), one
server per layout shared by the tests of this module (tests/serve_support.py).

The model is the embedded tiny model with a small BPE tokenizer and chat template (make-tiny-model
--tokenizer). The reference for every greedy answer is `helix generate --json` under the same layout and
flags (one run with all 32 prompts, EOS ignored so that lengths are fixed). The KV pool (2048 tokens,
blocks of 4) holds all 32 requests at once, or one request of 2048 tokens alone, which the queueing and
disconnect tests use to make requests wait.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helix.tiny import make_tiny_model
from helix.tiny_tokenizer import make_tiny_tokenizer
from mpi_launch import run_mpi
from serve_support import ServerProcess, error_of, http_request, metrics_values

pytestmark = pytest.mark.mpi

openai = pytest.importorskip("openai")

LAYOUTS = {"cp2": (2, ["--cp", "2"]), "tp2cp2": (4, ["--tp", "2", "--cp", "2"])}
ENGINE_FLAGS = ["--tokens-per-block", "4", "--max-tokens", "2048", "--max-batch-tokens", "64"]
MAX_WAITING = 40
NEW_TOKENS = 16
_rng = np.random.default_rng(2024)
PROMPTS = [_rng.integers(6, 1000, size=int(_rng.integers(3, 13))).tolist() for _ in range(32)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny"
    make_tiny_model(path)
    make_tiny_tokenizer(path)
    return path


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request):
    return request.param


@pytest.fixture(scope="module")
def reference(model, layout) -> list[list[int]]:
    """`helix generate`'s greedy tokens for every prompt, under the same layout."""
    ranks, flags = LAYOUTS[layout]
    args = ["-m", "helix", "generate", "--model", str(model), *flags, *ENGINE_FLAGS, "--json", "--ignore-eos"]
    args += ["--max-new-tokens", str(NEW_TOKENS)]
    for p in PROMPTS:
        args += ["--prompt-token-ids", ",".join(map(str, p))]
    result = run_mpi(ranks, args, timeout=240)
    assert result.returncode == 0, result.describe()
    outputs = json.loads(result.output.strip().splitlines()[-1])["outputs"]
    return [o["token_ids"] for o in outputs]


@pytest.fixture(scope="module")
def server(model, layout, tmp_path_factory):
    ranks, flags = LAYOUTS[layout]
    args = ["--model", str(model), "--served-model-name", "tiny", *flags, *ENGINE_FLAGS]
    args += ["--max-waiting", str(MAX_WAITING), "--drain-timeout", "30"]
    proc = ServerProcess(ranks, args, tmp_path_factory.mktemp("serve_log") / f"{layout}.log")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def complete(client, prompt, max_tokens=NEW_TOKENS, **extra):
    body = {"ignore_eos": True, "return_token_ids": True, **extra.pop("extra_body", {})}
    return client.completions.create(
        model="tiny", prompt=prompt, max_tokens=max_tokens, temperature=0.0, extra_body=body, **extra
    )


def wait_until_idle(server, timeout_s: float = 30) -> dict[str, float]:
    """Polls /metrics until no request runs or waits and every rank's KV blocks are free."""
    deadline = time.monotonic() + timeout_s
    while True:
        m = metrics_values(server)
        used = [v for k, v in m.items() if k.startswith("helix_kv_blocks_used")]
        if m["helix_requests_running"] == 0 and m["helix_requests_waiting"] == 0 and not any(used):
            assert len(used) == server.ranks  # every rank reported
            return m
        assert time.monotonic() < deadline, f"not idle after {timeout_s} s: {m}"
        time.sleep(0.1)


def test_greedy_completions_equal_helix_generate(server, client, reference):
    """Non-streamed and streamed greedy completions give helix generate's tokens; the streamed chunks
    (one per token, usage in the last) add up to the non-streamed answer; usage counts are right."""
    for i in (0, 7, 31):
        whole = complete(client, PROMPTS[i])
        choice = whole.choices[0]
        assert choice.token_ids == reference[i]
        assert choice.finish_reason == "length" and choice.prompt_token_ids == PROMPTS[i]
        assert whole.usage.prompt_tokens == len(PROMPTS[i]) and whole.usage.completion_tokens == NEW_TOKENS
        chunks = list(complete(client, PROMPTS[i], stream=True))
        assert len(chunks) == NEW_TOKENS
        assert [t for c in chunks for t in c.choices[0].token_ids] == reference[i]
        assert "".join(c.choices[0].text for c in chunks) == choice.text
        assert [c.choices[0].finish_reason for c in chunks] == [None] * (NEW_TOKENS - 1) + ["length"]
        assert chunks[-1].usage.completion_tokens == NEW_TOKENS
        assert all(c.usage is None for c in chunks[:-1])


def test_32_concurrent_clients(server, client, reference):
    """32 threads at once, half streaming: every answer is its prompt's reference, nothing lost, and every
    KV block on every rank is free afterwards."""

    def one(i: int) -> list[int]:
        if i % 2:
            return [t for c in complete(client, PROMPTS[i], stream=True) for t in c.choices[0].token_ids]
        return complete(client, PROMPTS[i]).choices[0].token_ids

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(one, range(32)))
    assert got == reference
    assert len({tuple(g) for g in got}) == 32
    m = wait_until_idle(server)
    assert m["helix_time_to_first_token_seconds_count"] >= 32
    assert m["helix_generation_tokens_total"] >= 32 * NEW_TOKENS


def test_text_chat_stop_logprobs_and_seed(server, client, reference):
    """Text prompts, chat through the model's template, stop strings and stop token ids, logprobs of the
    sampled tokens, and seeded sampling (the same seed: the same answer, streamed or not)."""
    text = complete(client, "Hello, world").choices[0].text
    assert len(text) > 4
    stop = text[3:5]
    stopped = complete(client, "Hello, world", stop=[stop]).choices[0]
    assert stopped.finish_reason == "stop" and stopped.stop_reason == stop
    assert stopped.text == text[: text.index(stop)]
    tok = reference[3][5]
    by_id = complete(client, PROMPTS[3], extra_body={"stop_token_ids": [tok]}).choices[0]
    assert by_id.token_ids == reference[3][: reference[3].index(tok) + 1] and by_id.stop_reason == tok

    lp = complete(client, PROMPTS[2], max_tokens=4, logprobs=3).choices[0].logprobs
    assert len(lp.token_logprobs) == 4 and len(lp.top_logprobs) == 4
    for sampled, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert sampled <= 0 and len(top) <= 3 and max(top.values()) == pytest.approx(sampled)  # greedy

    messages = [{"role": "user", "content": "Hello, world"}]
    chat = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, extra_body={"return_token_ids": True}
    )
    prompt_ids = chat.choices[0].prompt_token_ids
    assert prompt_ids[0] == 0  # the template's bos
    same = complete(client, prompt_ids, max_tokens=8, extra_body={"ignore_eos": False}).choices[0]
    assert chat.choices[0].message.content == same.text and chat.choices[0].token_ids == same.token_ids
    streamed = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True}, logprobs=True, top_logprobs=2,
    )  # fmt: skip
    chunks = list(streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == same.text
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == len(prompt_ids)

    seeded = {"temperature": 1.0, "top_p": 0.9, "seed": 1234}
    a = client.completions.create(model="tiny", prompt=PROMPTS[4], max_tokens=12, **seeded)
    b = client.completions.create(model="tiny", prompt=PROMPTS[4], max_tokens=12, stream=True, **seeded)
    assert "".join(c.choices[0].text for c in b) == a.choices[0].text


def test_bad_inputs_get_openai_errors(server, client):
    """Each bad input: the right status and an OpenAI-style error naming the problem; nothing is lost
    (the server answers the next request correctly)."""
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="other", prompt=[1, 2], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match=r"outside the vocabulary \[0, 1000\)"):
        client.completions.create(model="tiny", prompt=[1, 2, 1000], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="more than the KV cache can hold for one request") as e:
        client.completions.create(model="tiny", prompt=[1, 2], max_tokens=2047)
    assert "2048 tokens" in str(e.value)
    with pytest.raises(openai.BadRequestError, match="n must be 1"):
        client.completions.create(model="tiny", prompt=[1, 2], max_tokens=2, n=2)
    cases = {
        "{not json": ("not valid JSON", None),
        "[1, 2]": ("must be a JSON object", None),
        '{"prompt": [1, 2], "max_tokens": "5"}': ("valid integer", "max_tokens"),
        '{"prompt": [1, 2], "temperature": -1}': ("greater than or equal to 0", "temperature"),
        '{"prompt": [1, 2], "stream": 1}': ("valid boolean", "stream"),
        '{"prompt": []}': ("prompt is empty", "prompt"),
        '{"prompt": [[1], [2]]}': ("one prompt per request", "prompt"),
        '{"max_tokens": 3}': ("Field required", "prompt"),
    }
    for body, (message, param) in cases.items():
        status, raw = http_request(server, "POST", "/v1/completions", body)
        err = error_of(raw)
        assert status == 400 and message in err["message"] and err["param"] == param, (body, err)
    status, raw = http_request(server, "POST", "/v1/chat/completions", '{"messages": [{"role": "tool"}]}')
    assert status == 400 and "unknown role" in error_of(raw)["message"]
    assert complete(client, PROMPTS[0], max_tokens=3).choices[0].token_ids  # still serving
    wait_until_idle(server)


def test_full_queue_429_and_disconnects_free_kv_blocks(server, client, reference):
    """A streamed request reserving the whole KV pool makes the others wait: with --max-waiting 40, the
    41st waiting request gets 429. The streaming client then disconnects: its request is aborted on every
    rank, the 40 waiting ones run and answer correctly. A non-streaming client that disconnects is
    aborted too. Afterwards every KV block is free."""
    hog = complete(client, [5, 6, 7, 8], max_tokens=2044, stream=True)
    first = next(iter(hog))
    assert first.choices[0].token_ids
    with ThreadPoolExecutor(MAX_WAITING) as pool:
        waiting = [pool.submit(complete, client, PROMPTS[i % 32], 4) for i in range(MAX_WAITING)]
        deadline = time.monotonic() + 60
        while metrics_values(server)["helix_requests_waiting"] < MAX_WAITING:
            assert time.monotonic() < deadline and not any(f.done() for f in waiting)
            time.sleep(0.05)
        with pytest.raises(openai.RateLimitError, match="--max-waiting 40"):
            complete(client, PROMPTS[0], 4)
        hog.close()  # the client goes away mid-stream
        got = [f.result(timeout=120).choices[0].token_ids for f in waiting]
    assert got == [reference[i % 32][:4] for i in range(MAX_WAITING)]
    wait_until_idle(server)

    before = metrics_values(server).get('helix_requests_finished_total{finish_reason="aborted"}', 0)
    body = json.dumps({"prompt": [5, 6, 7], "max_tokens": 2000, "ignore_eos": True}).encode()
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        head = f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
        sock.sendall(head.encode() + body)
        deadline = time.monotonic() + 30
        while metrics_values(server)["helix_requests_running"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    m = wait_until_idle(server)
    assert m['helix_requests_finished_total{finish_reason="aborted"}'] == before + 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(server, reference):
    """The README's curl commands: /health, /v1/models, a streamed completion as server-sent events."""
    health = subprocess.run(["curl", "-sf", server.url + "/health"], capture_output=True, timeout=30)
    assert health.returncode == 0
    models = json.loads(subprocess.run(["curl", "-s", server.url + "/v1/models"], capture_output=True).stdout)
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] == 2048
    body = {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 4, "temperature": 0, "stream": True}
    out = subprocess.run(
        ["curl", "-sN", server.url + "/v1/completions", "-H", "Content-Type: application/json",
         "-d", json.dumps({**body, "return_token_ids": True, "ignore_eos": True})],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    events = [line[6:] for line in out.stdout.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) == 5
    assert [json.loads(e)["choices"][0]["token_ids"][0] for e in events[:-1]] == reference[1][:4]


def test_sigterm_drains_and_every_rank_exits_0(server, client, reference):
    """SIGTERM while a request of 200 tokens is decoding: new requests are refused (503), the running one
    finishes, and the job exits 0 (only mpiexec's exit code counts: every rank exited 0)."""
    result = {}

    def long_request() -> None:
        result["out"] = complete(client, PROMPTS[5], max_tokens=200).choices[0]

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 30
    while metrics_values(server)["helix_requests_running"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    server.send_sigterm()
    t0 = time.monotonic()
    statuses = []  # 200 until the signal has reached rank 0, then 503 until the server is gone
    while 503 not in statuses and time.monotonic() - t0 < 20:
        try:
            statuses.append(
                http_request(server, "POST", "/v1/completions", '{"prompt": [1], "max_tokens": 1}')[0]
            )
        except OSError:
            break
    worker.join(60)
    assert result["out"].finish_reason == "length" and result["out"].token_ids[:NEW_TOKENS] == reference[5]
    assert statuses[-1] == 503 and set(statuses) <= {200, 503}
    assert server.proc.wait(60) == 0, server.log()
    assert time.monotonic() - t0 < 30
    assert "helix serve: stopped" in server.log()


def _descendants(pid: int) -> list[int]:
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_a_rank_that_dies_ends_the_job(model, tmp_path):
    """SIGKILL to one rank of a serving job (idle, waiting in the control broadcast): the job ends
    within seconds, non-zero."""
    proc = ServerProcess(2, ["--model", str(model), "--cp", "2", *ENGINE_FLAGS], tmp_path / "die.log")
    try:
        proc.wait_ready()
        argv = {p: Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in _descendants(proc.proc.pid)}
        ranks = [p for p, a in argv.items() if a[0] == sys.executable.encode() and b"serve" in a]
        assert len(ranks) == 2
        t0 = time.monotonic()
        os.kill(max(ranks), signal.SIGKILL)
        rc = proc.proc.wait(30)
        assert rc != 0 and time.monotonic() - t0 < 20, proc.log()
    finally:
        proc.stop()


def test_port_in_use_is_a_clear_error(model):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_mpi(1, ["-m", "helix", "serve", "--model", str(model), "--port", str(port)], timeout=60)
    assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output, result.describe()


def test_bench_serve_smoke(tmp_path):
    """`helix bench serve` at a tiny size (so that it never rots): JSON with every level, and the plots."""
    from helix.bench import serve as bench_serve

    args = ["--concurrency", "1,2", "--requests", "2", "--max-tokens", "4", "--prompt-len", "8"]
    assert bench_serve.main([*args, "--out", str(tmp_path)]) == 0
    levels = json.loads((tmp_path / "serve.json").read_text())["levels"]
    assert [lv["concurrency"] for lv in levels] == [1, 2]
    for lv in levels:
        assert lv["output_tokens_per_s"] > 0 and lv["ceiling_tokens_per_s"] > 0
        assert 0 < lv["ttft_ms"]["p50"] <= lv["ttft_ms"]["p99"] and lv["itl_ms"]["p50"] > 0
    assert (tmp_path / "serve-throughput.png").read_bytes()[:4] == b"\x89PNG"

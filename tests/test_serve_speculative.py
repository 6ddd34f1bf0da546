"""`helix serve --speculative-tokens 2` end to end, as users query it (the `openai` client, cp2 under
mpiexec): greedy answers equal plain `helix generate`'s token for token, streamed or not, and /metrics
counts the verify steps, the drafts verified and the drafts accepted. The model is the tiny model with an
MTP layer (random weights: its drafts are mostly rejected, which exercises the rollback of every step)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helix.tiny import make_tiny_model
from helix.tiny_tokenizer import make_tiny_tokenizer
from mpi_launch import run_mpi
from serve_support import ServerProcess, metrics_values

pytestmark = pytest.mark.mpi

openai = pytest.importorskip("openai")

FLAGS = ["--cp", "2", "--tokens-per-block", "4", "--max-tokens", "512", "--max-batch-tokens", "32"]
K = 2
NEW_TOKENS = 12
_rng = np.random.default_rng(7)
PROMPTS = [_rng.integers(6, 1000, size=n).tolist() for n in (3, 9, 14)]


def test_speculative_server_equals_plain_greedy_and_counts_drafts(tmp_path):
    model = tmp_path / "tiny"
    make_tiny_model(model, mtp=True)
    make_tiny_tokenizer(model)
    args = ["-m", "helix", "generate", "--model", str(model), *FLAGS, "--json", "--ignore-eos"]
    args += ["--max-new-tokens", str(NEW_TOKENS)]
    for p in PROMPTS:
        args += ["--prompt-token-ids", ",".join(map(str, p))]
    result = run_mpi(2, args, timeout=240)
    assert result.returncode == 0, result.describe()
    reference = [o["token_ids"] for o in json.loads(result.output.strip().splitlines()[-1])["outputs"]]

    server = ServerProcess(
        2, ["--model", str(model), "--served-model-name", "tiny", *FLAGS, "--speculative-tokens", str(K)],
        tmp_path / "serve.log", limit_s=300,
    )  # fmt: skip
    try:
        server.wait_ready()
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=120)
        body = {"ignore_eos": True, "return_token_ids": True}
        for prompt, ref in zip(PROMPTS, reference, strict=True):
            out = client.completions.create(
                model="tiny", prompt=prompt, max_tokens=NEW_TOKENS, temperature=0.0, extra_body=body
            )
            assert out.choices[0].token_ids == ref and out.usage.completion_tokens == NEW_TOKENS
        chunks = client.completions.create(
            model="tiny",
            prompt=PROMPTS[1],
            max_tokens=NEW_TOKENS,
            temperature=0.0,
            extra_body=body,
            stream=True,
        )
        assert [t for c in chunks for t in c.choices[0].token_ids] == reference[1]
        m = metrics_values(server)
        steps = m["helix_spec_decode_steps_total"]
        assert steps >= 4 * (NEW_TOKENS - 1) / (K + 1)  # 4 requests, each step emits at most K + 1 tokens
        assert m["helix_spec_decode_draft_tokens_total"] == K * steps
        assert 0 <= m["helix_spec_decode_accepted_tokens_total"] <= K * steps
    finally:
        server.stop()

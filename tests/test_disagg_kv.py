"""The KV hand-off below the servers: the re-sharding plan (which rows a rank of one layout pulls from
which rank of another), the engine's read / import of a sequence's rows (one all-or-nothing step), and the
offline hand-off through a file (helix.LLM.export_kv / import_kv) within a process and across MPI jobs of
different layouts, with the refusals of a file that does not fit."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest
from disagg_support import make_disagg_model
from helix import LLM, ArgumentError, KVCacheFullError, ParallelConfig, SamplingParams, _core
from helix.disagg import KVFileError, KVLayout, owned_count, owned_positions, pull_runs
from mpi_launch import run_mpi

# ---- the plan (pure Python) against the engine's own block rule


@pytest.mark.parametrize("src_cp,dst_cp", [(1, 2), (2, 3), (3, 2), (2, 2), (4, 1), (1, 1)])
def test_pull_runs_deliver_exactly_the_owned_rows(src_cp, dst_cp):
    """For every pair of block sizes and lengths: each destination rank pulls exactly the positions the
    BlockTable says it owns, each once, from the source rank that owns it, at that rank's slot, and the
    rows land densely in ascending order; the counts match the compiled kv_owned_count."""
    for src_tpb, dst_tpb, n in itertools.product((1, 3, 4), (1, 2, 5), (1, 2, 7, 12, 31)):
        src, dst = KVLayout(1, src_cp, src_tpb), KVLayout(1, dst_cp, dst_tpb)
        table = _core.BlockTable(64, src_tpb, 0, src_cp)
        for r in range(dst_cp):
            dst_table = _core.BlockTable(64, dst_tpb, r, dst_cp)
            mine = [p for p in range(n) if dst_table.owns(p)]
            assert owned_count(dst, n, r) == len(mine) == _core.kv_owned_count(n, dst_tpb, r, dst_cp)
            assert [p for run in owned_positions(dst, n, r) for p in run] == mine
            got, row = [], 0
            for run in pull_runs(src, dst, n, r):
                assert run.dst_row == row and run.count >= 1
                assert run.src_slot // src_tpb == (run.src_slot + run.count - 1) // src_tpb  # one block
                for k in range(run.count):
                    p = run.position + k
                    assert table.owner_rank(p) == run.src_rank
                    assert src.slot(p) == run.src_slot + k
                    got.append(p)
                row += run.count
            assert got == mine


def test_the_example_of_the_docs():
    """docs/disaggregated.md: 26 positions, context cp2 blocks of 4, generation cp3 blocks of 3."""
    src, dst = KVLayout(1, 2, 4), KVLayout(1, 3, 3)
    runs = [(r.position, r.count, r.src_rank) for r in pull_runs(src, dst, 26, 0)]
    assert runs == [(0, 3, 0), (9, 3, 0), (18, 2, 0), (20, 1, 1)]
    assert [owned_count(dst, 26, r) for r in range(3)] == [9, 9, 8]


def test_layout_refuses_bad_fields():
    with pytest.raises(ValueError, match="KVLayout.cp must be a positive integer"):
        KVLayout(1, 0, 4)
    with pytest.raises(ValueError, match="dst_cp_rank"):
        pull_runs(KVLayout(1, 1, 4), KVLayout(1, 2, 4), 8, 2)


# ---- the engine: read and import rows


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_disagg_model(tmp_path_factory.mktemp("kv") / "tiny12")


def llm_of(model, tpb: int, dtype: str = "float32", max_tokens: int = 256) -> LLM:
    return LLM(
        model, ParallelConfig(tokens_per_block=tpb, max_tokens=max_tokens), dtype=dtype, progress=False
    )


def decode(llm: LLM, rid: int):
    out = None
    while llm.has_unfinished_requests():
        out = {o.request_id: o for o in llm.step()}.get(rid, out)
    return out


PROMPT = [(3 * i + 1) % 990 + 6 for i in range(29)]
GREEDY = SamplingParams(max_new_tokens=9, ignore_eos=True)


def test_read_and_import_rows_round_trip(model):
    """The rows read from one engine, imported into another (other block size), read back equal, and the
    import is one step: every bad input is refused naming it, and leaves the table as it was."""
    a, b = llm_of(model, 4), llm_of(model, 3)
    rid = a.add_request(PROMPT, GREEDY)
    a.step()  # the prompt (29 tokens fit one step) and the first token
    seq, out = a.scheduler.kv_sequence(rid)
    positions, rows = a.engine.read_kv(seq)
    assert positions.tolist() == list(range(len(PROMPT))) and rows.shape == (4, len(PROMPT), 80)
    eng = b.engine
    eng.add_sequence(7, reserve_tokens=len(PROMPT))
    free = eng.num_free_blocks
    for bad, match in [
        (rows[:, :-1], "argument 'rows'"),
        (rows.astype(np.float64), "unsupported dtype"),
        (rows[:3], "the number of layers"),
    ]:
        with pytest.raises(ArgumentError, match=match):
            eng.import_kv(7, len(PROMPT), np.ascontiguousarray(bad))
    with pytest.raises(ArgumentError, match="num_positions"):
        eng.import_kv(7, 0, rows[:, :0].copy())
    with pytest.raises(ArgumentError, match="unknown sequence 8"):
        eng.import_kv(8, len(PROMPT), rows)
    assert eng.num_free_blocks == free and len(eng.block_table.held_positions(7)) == 0
    eng.import_kv(7, len(PROMPT), rows)
    assert np.array_equal(eng.read_kv(7)[1], rows)
    with pytest.raises(ArgumentError, match="is not empty"):
        eng.import_kv(7, len(PROMPT), rows)
    eng.free_sequence(7)
    small = llm_of(model, 4, max_tokens=8)
    small.engine.add_sequence(0)
    with pytest.raises(KVCacheFullError):
        small.engine.import_kv(0, len(PROMPT), rows)
    assert small.engine.num_free_blocks == small.engine.num_kv_blocks
    a.abort_request(rid)


@pytest.mark.skipif(_core.cuda.device_count() == 0, reason="no CUDA GPU visible (the SIMT emulator counts)")
def test_gpu_engine_hands_off_both_ways(model, tmp_path):
    """The GPU engine's pools take the hand-off too: rows imported into it read back bit for bit, and a
    request exported by the CPU engine after 3 tokens decodes on in the GPU engine to the same tokens."""
    cpu = llm_of(model, 4)
    gpu = LLM(model, ParallelConfig(tokens_per_block=3, max_tokens=256), device="cuda", progress=False)
    ref = cpu.generate([PROMPT], GREEDY)[0].token_ids
    rid = cpu.add_request(PROMPT, GREEDY)
    for _ in range(3):
        cpu.step()
    seq, _ = cpu.scheduler.kv_sequence(rid)
    _, rows = cpu.engine.read_kv(seq)
    cpu.export_kv(rid, tmp_path / "r.kv")
    cpu.abort_request(rid)
    gpu.engine.add_sequence(7, reserve_tokens=rows.shape[1])
    gpu.engine.import_kv(7, rows.shape[1], rows)
    assert np.array_equal(gpu.engine.read_kv(7)[1], rows)
    gpu.engine.free_sequence(7)
    assert decode(gpu, gpu.import_kv(tmp_path / "r.kv", GREEDY)).token_ids == ref
    assert gpu.engine.num_free_blocks == gpu.engine.num_kv_blocks


# ---- the file


@pytest.mark.parametrize("params", [GREEDY, SamplingParams(max_new_tokens=9, temperature=0.9, seed=5)])
def test_file_round_trip_mid_decode(model, tmp_path, params):
    """A request exported after 3 tokens and imported into an LLM with other blocks decodes on to the
    same tokens as a decode from scratch (greedy, and sampled with the same seed); blocks free after."""
    a, b = llm_of(model, 4), llm_of(model, 3)
    ref = a.generate([PROMPT], params)[0].token_ids
    rid = a.add_request(PROMPT, params)
    for _ in range(3):
        a.step()
    a.export_kv(rid, tmp_path / "r.kv")
    a.abort_request(rid)
    out = decode(b, b.import_kv(tmp_path / "r.kv", params))
    assert out.token_ids == ref
    assert b.engine.num_free_blocks == b.engine.num_kv_blocks
    assert a.engine.num_free_blocks == a.engine.num_kv_blocks


def test_file_carries_the_logprobs_of_the_tokens_so_far(model, tmp_path):
    """With logprobs, the imported request's output has one entry per token (the exporter's included),
    equal to a decode from scratch; a file exported without them cannot serve a request that asks."""
    params = SamplingParams(max_new_tokens=9, ignore_eos=True, logprobs=2)
    a, b = llm_of(model, 4), llm_of(model, 3)
    ref = a.generate([PROMPT], params)[0].logprobs
    rid = a.add_request(PROMPT, params)
    for _ in range(3):
        a.step()
    a.export_kv(rid, tmp_path / "with.kv")
    a.abort_request(rid)
    out = decode(b, b.import_kv(tmp_path / "with.kv", params))
    assert [lp.token_id for lp in out.logprobs] == [lp.token_id for lp in ref] == out.token_ids
    assert [lp.logprob for lp in out.logprobs] == pytest.approx([lp.logprob for lp in ref], abs=1e-5)
    rid = a.add_request(PROMPT, GREEDY)
    a.step()
    a.export_kv(rid, tmp_path / "without.kv")
    a.abort_request(rid)
    with pytest.raises(ValueError, match=r"generated before the hand-off \(1\), got none"):
        b.import_kv(tmp_path / "without.kv", params)
    assert b.engine.num_free_blocks == b.engine.num_kv_blocks


def test_file_that_does_not_fit_is_refused(model, tmp_path):
    a = llm_of(model, 4)
    rid = a.add_request(PROMPT, GREEDY)
    a.step()
    path = tmp_path / "r.kv"
    a.export_kv(rid, path)
    a.abort_request(rid)
    other = make_disagg_model(tmp_path / "other", seed=1)
    with pytest.raises(KVFileError, match="another model"):
        llm_of(other, 4).import_kv(path, GREEDY)
    with pytest.raises(KVFileError, match="stored as float32, this LLM bfloat16"):
        llm_of(model, 4, dtype="bfloat16").import_kv(path, GREEDY)
    cut = tmp_path / "cut.kv"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(KVFileError, match="truncated or damaged"):
        a.import_kv(cut, GREEDY)
    cut.write_bytes(path.read_bytes()[:30])
    with pytest.raises(KVFileError, match="truncated"):
        a.import_kv(cut, GREEDY)
    (tmp_path / "junk.kv").write_bytes(b"not a kv file at all")
    with pytest.raises(KVFileError, match="not a Helix KV file"):
        a.import_kv(tmp_path / "junk.kv", GREEDY)
    with pytest.raises(ValueError, match="1 to max_new_tokens - 1"):
        a.import_kv(path, SamplingParams(max_new_tokens=1))
    assert a.engine.num_free_blocks == a.engine.num_kv_blocks
    shutil.rmtree(other)


@pytest.mark.mpi
def test_file_round_trip_across_mpi_layouts(model, tmp_path):
    """Exported mid-decode by a cp2 job (blocks of 4), imported by a cp3 job (blocks of 3) and a tp2cp2
    job (blocks of 2): each decodes on to its own from-scratch tokens (checked inside the job)."""
    path = str(tmp_path / "cp2.kv")
    prog = ["tests/mpi/kv_file_roundtrip.py"]
    common = ["--model", str(model), "--file", path]
    result = run_mpi(2, [*prog, "export", *common, "--cp", "2", "--tokens-per-block", "4"], timeout=120)
    assert result.returncode == 0, result.describe()
    exported = json.loads(result.output.strip().splitlines()[-1])["token_ids"]
    for n, layout in [
        (3, ["--cp", "3", "--tokens-per-block", "3"]),
        (4, ["--tp", "2", "--cp", "2", "--tokens-per-block", "2"]),
    ]:
        result = run_mpi(n, [*prog, "import", *common, *layout], timeout=120)
        assert result.returncode == 0, result.describe()
        got = json.loads(result.output.strip().splitlines()[-1])["token_ids"]
        assert got[:3] == exported and len(got) == 10


def test_router_refuses_bad_urls(capsys):
    from helix.serve.router import main

    assert main(["--context", "127.0.0.1:8100", "--generation", "http://127.0.0.1:8200"]) == 2
    assert "--context must be http://HOST:PORT, got '127.0.0.1:8100'" in capsys.readouterr().err


def test_context_handles_expire_and_are_claimed_once():
    """The context server's registry: a handle is claimed once, released once; one not claimed within the
    timeout (or not released within twice it after the claim) is freed and then unknown."""
    import time

    from helix.serve.context_role import ContextRole
    from helix.serve.protocol import ApiError

    wakes = []
    role = ContextRole(0.5, lambda: wakes.append(1))
    role.add({"handle": "a"}, 1)
    role.add({"handle": "b"}, 2)
    role.add({"handle": "c"}, 3)
    assert role.claim("a") == {"handle": "a"} and wakes
    with pytest.raises(ApiError, match="already claimed") as err:
        role.claim("a")
    assert err.value.status == 409
    role.release("b")
    assert role.take_freed() == [2]
    time.sleep(0.6)  # "c" was never claimed: expired; "a" was claimed: kept for twice the timeout
    assert role.take_freed() == [3]
    with pytest.raises(ApiError, match="unknown KV handle") as err:
        role.claim("c")
    assert err.value.status == 404
    time.sleep(0.5)
    assert role.take_freed() == [1] and not role.busy


def test_serve_roles_need_the_cpu_engine(model):
    import subprocess
    import sys

    args = [sys.executable, "-m", "helix", "serve", "--model", str(model), "--role", "generation"]
    out = subprocess.run(
        [*args, "--device", "cuda", "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "--role generation needs --device cpu" in out.stderr

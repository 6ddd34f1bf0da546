"""Smoke tests of the benchmark suites at tiny sizes (each a few seconds), so that they never rot.

They check structure and invariants (JSON written, PNG written, bytes formula == measured message size,
shares sum to 1, KV bytes per rank, the peer's JSON line), not speed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helix.bench import common
from tolerances import BF16_ROUNDED_PATHS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _has_gpu() -> bool:
    from helix import _core

    return _core.cuda.device_count() > 0


def _png(path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC


def test_time_calls_counts_and_orders():
    t = common.time_calls(lambda: sum(range(100)), repeats=4)
    assert t.n >= 4 and 0 < t.min <= t.median
    with pytest.raises(ValueError):
        common.time_calls(lambda: None, repeats=0)
    with pytest.raises(ValueError):
        common.Timing(median=1.0, min=2.0, n=1)


def test_ceilings_are_positive_and_threads_validated():
    common.set_threads(1)
    assert common.copy_bandwidth(1 << 20, repeats=2) > 0
    assert common.matmul_gflops(64, repeats=2) > 0
    common.set_threads(2)
    assert common.copy_bandwidth(1 << 20, repeats=2) > 0
    common.set_threads(1)
    with pytest.raises(ValueError):
        common.set_threads(0)


def test_json_and_plots(tmp_path):
    out = common.write_json(
        tmp_path / "a" / "r.json", {"x": np.float32(1.5), "t": common.Timing(2.0, 1.0, 3)}
    )
    assert json.loads(out.read_text()) == {"x": 1.5, "t": {"median": 2.0, "min": 1.0, "n": 3}}
    common.plot_lines(tmp_path / "l.png", {"a": ([1, 2], [3, 4])}, xlabel="x", ylabel="y", title="t")
    common.plot_bars(tmp_path / "b.png", ["a", "b"], [1.0, 10.0], ylabel="y", title="t", logy=True)
    assert _png(tmp_path / "l.png") and _png(tmp_path / "b.png")
    info = common.machine_info(1)
    assert info["cores"] >= 1 and len(info["loadavg_1_5_15"]) == 3 and "OPENBLAS_CORETYPE" in info


def test_attention_suite(tmp_path, capsys):
    from helix import ops
    from helix.bench import attention

    paths = [p for p, why in ops.kernel_paths().items() if not why and p != "auto"]
    args = [
        "--sizes",
        "256,512",
        "--tokens",
        "3",
        "--kernel-paths",
        ",".join(paths),
        "--threads",
        "1",
        "--repeats",
        "1",
        "--min-seconds",
        "0",
        "--rounds",
        "2",
        "--copy-mb",
        "8",
        "--out",
        str(tmp_path / "a.json"),
        "--png",
        str(tmp_path / "a.png"),
    ]
    assert attention.main(args) == 0
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert {(r["S"], r["kv_dtype"]) for r in rows} == {
        (s, d) for s in (256, 512) for d in ("float32", "bfloat16")
    }
    assert {r["kernel"] for r in rows if r["kv_dtype"] == "bfloat16"} == set(paths)
    assert all(r["T"] == 3 and r["ratio_to_numpy"] > 0 and r["ratio_to_copy"] > 0 for r in rows)
    assert _png(tmp_path / "a.png")
    with pytest.raises(SystemExit):  # a path this machine lacks, or no path at all, is refused up front
        attention.main([*args[:4], "--kernel-paths", "no_such_path"])


def test_attention_accuracy_suite(tmp_path, capsys):
    from helix import ops
    from helix.bench import attention_accuracy

    out = tmp_path / "acc.json"
    assert attention_accuracy.main(["--keys", "40", "--tokens", "2", "--seeds", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    paths = {p for p, why in ops.kernel_paths().items() if not why}
    assert {(r["kernel_path"], r["spread"]) for r in rows} == {
        (p, s) for p in paths for s in (1.0, 10.0, 100.0)
    }
    for r in rows:  # O(1) scores: float32-grade on every path but the bf16-rounded ones
        if r["spread"] == 1.0 and r["kernel"] not in BF16_ROUNDED_PATHS:
            assert r["o_error"] < 5e-5 and r["lse_error"] < 5e-5
        assert r["o_error"] < 1.0 and r["max_score"] > 2 * r["spread"]


def test_ops_suite(tmp_path, capsys):
    from helix.bench import ops

    args = [
        "--attention-sizes",
        "256",
        "--tokens",
        "1,2",
        "--linear",
        "kv_a_proj",
        "--repeats",
        "1",
        "--min-seconds",
        "0",
        "--pool-mb",
        "8",
        "--copy-mb",
        "4",
        "--matmul-n",
        "128",
        "--out",
        str(tmp_path / "o.json"),
        "--png",
        str(tmp_path / "o.png"),
    ]
    assert ops.main(args) == 0
    data = json.loads((tmp_path / "o.json").read_text())
    kinds = {r["op"] for r in data["rows"]}
    assert kinds == {"mla_attention", "merge_states", "linear"}
    linear = [r for r in data["rows"] if r["op"] == "linear"]
    assert len(linear) == 4  # float32 / bfloat16 x T = 1, 2
    assert data["meta"]["copy_gbs"] > 0 and data["meta"]["matmul_gflops"] > 0
    assert _png(tmp_path / "o.png")
    with pytest.raises(SystemExit):
        ops.main(["--linear", "no_such_layer"])


def test_linear_suite(tmp_path, capsys):
    from helix import _core
    from helix.bench import linear

    out = tmp_path / "l.json"
    simd = _core.layers.linear_isa()
    argv = [
        "--shapes",
        "kv_a",
        "--tokens",
        "16",
        "--paths",
        f"{simd},portable",
        "--rounds",
        "2",
        "--calls",
        "1",
    ]
    assert linear.main([*argv, "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["shape"], r["T"], r["path"]) for r in rows] == [("kv_a", 16, simd), ("kv_a", 16, "portable")]
    assert all(len(r["gflops"]) == 2 and min(r["gflops"]) > 0 and r["ratio"] > 0 for r in rows)
    assert "kv_a [576x2048]" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        linear.main(["--paths", "sse9"])


@pytest.mark.mpi
def test_helix_step_suite(tmp_path, capsys):
    from helix.bench import helix_step

    args = [
        "--ranks",
        "1,2",
        "--contexts",
        "200",
        "--batches",
        "1,3",
        "--repeats",
        "1",
        "--timeout",
        "120",
        "--out",
        str(tmp_path / "h.json"),
        "--png",
        str(tmp_path / "h.png"),
    ]
    assert helix_step.main(args) == 0
    rows = json.loads((tmp_path / "h.json").read_text())["rows"]
    assert {(r["ranks"], r["T"]) for r in rows} == {(n, t) for n in (1, 2) for t in (1, 3)}
    for r in rows:
        cp, T = r["ranks"], r["T"]
        # FACTS §1 with fp32 partials: (cp-1)/cp * T * H * (R + 1) * 4 bytes.
        assert r["bytes_formula"] == r["bytes_measured"] == (cp - 1) * T * 128 // cp * 513 * 4
        assert r["step_ms"] > 0 and r["attention_ms"] > 0
    assert _png(tmp_path / "h.png")
    with pytest.raises(SystemExit):
        helix_step.main(["--ranks", "3"])  # 128 heads are not divisible by 3


@pytest.mark.mpi
def test_decode_suite(tmp_path, capsys):
    from helix.bench import decode

    model = tmp_path / "model"
    args = [
        "--model",
        "tiny",
        "--model-dir",
        str(model),
        "--contexts",
        "40,100",
        "--configs",
        "cp1,cp2",
        "--steps",
        "1",
        "--copy-mb",
        "4",
        "--timeout",
        "120",
        "--no-progress",
        "--out",
        str(tmp_path / "d.json"),
        "--png",
        str(tmp_path / "d.png"),
    ]
    assert decode.main(args) == 0
    data = json.loads((tmp_path / "d.json").read_text())
    rows = data["rows"]
    assert {(r["config"], r["context"]) for r in rows} == {(c, n) for c in ("cp1", "cp2") for n in (40, 100)}
    cfg = json.loads((model / "config.json").read_text())
    row_bytes = (cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"]) * 2 * cfg["num_hidden_layers"]  # bf16
    for r in rows:
        assert sum(r["shares"].values()) == pytest.approx(1.0)
        # Fullest rank: cp1 holds every position; cp2 the most of the 32-token blocks dealt round-robin.
        owned = (
            r["context"]
            if r["ranks"] == 1
            else max(sum(1 for p in range(r["context"]) if (p // 32) % 2 == k) for k in (0, 1))
        )
        assert r["kv_bytes_per_rank"] == owned * row_bytes
        assert r["planner"]["predicted_ms"] > 0 and r["planner"]["measured_over_predicted"] > 0
    assert set(rows[0]["shares"]) == {"attention", "exchange", "linear", "moe", "allreduce", "other"}
    assert _png(tmp_path / "d.png")
    assert decode.ensure_model("tiny", model) == model  # cached: not rewritten


@pytest.mark.mpi
def test_speculative_suite(tmp_path, capsys):
    """--quick: the tiny model with an MTP layer, contexts 40 and 100, cp1 and cp2, every k and alpha."""
    from helix.bench import report, speculative

    model = tmp_path / "model"
    args = ["--quick", "--model-dir", str(model), "--timeout", "120", "--no-progress"]
    args += ["--out", str(tmp_path / "speculative.json"), "--png", str(tmp_path / "s.png")]
    assert speculative.main(args) == 0
    rows = json.loads((tmp_path / "speculative.json").read_text())["rows"]
    grid = speculative.points([0, 1, 2, 3], [0.6, 0.8, 0.9])
    assert len(grid) == 10
    assert [(r["config"], r["context"], r["k"], r["alpha"]) for r in rows] == [
        (c, n, k, a) for c in ("cp1", "cp2") for n in (40, 100) for k, a in grid
    ]
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["draft_ms"] + r["verify_ms"] <= r["step_ms"]
        # A step emits 1 + accepted drafts (nothing is cut: max_new_tokens leaves room).
        assert r["tokens_per_step"] == pytest.approx(1 + r["mean_accepted"])
        if r["k"] == 0:
            assert r["draft_ms"] == 0 and r["acceptance_rate"] == 0 and r["speedup"] == 1
        else:
            assert r["draft_ms"] > 0 and 0 <= r["acceptance_rate"] <= 1
            assert r["expected_speedup"] == pytest.approx(
                speculative.expected_tokens_per_step(r["k"], r["alpha"]) / r["cost"]
            )
    assert speculative.expected_tokens_per_step(3, 0.5) == 1.875
    assert "| cp2 | 100 | 3 | 0.9 |" in capsys.readouterr().out
    assert _png(tmp_path / "s.png")
    assert report.main([str(tmp_path)]) == 0  # `helix bench report` renders the same table
    assert "### speculative.json" in (out := capsys.readouterr().out) and "| cp2 | 100 | 3 | 0.9 |" in out


def test_peer_suite_side_by_side_and_absent_peers_skipped(tmp_path, capsys, monkeypatch):
    pytest.importorskip("transformers")
    from helix.bench import decode, peer

    model = decode.ensure_model("tiny", tmp_path / "model")
    monkeypatch.setenv("HELIX_PEERS_DIR", str(tmp_path / "no-peers"))  # vLLM and llama.cpp: not installed
    capsys.readouterr()
    args = [
        "--model",
        "tiny",
        "--model-dir",
        str(model),
        "--systems",
        "helix,vllm,llama.cpp,transformers",
        "--prompts",
        "40,64",
        "--threads",
        "1",
        "--rounds",
        "2",
        "--steps",
        "1",
        "--json",
        "--out",
        str(tmp_path / "p.json"),
        "--png",
        str(tmp_path / "p.png"),
    ]
    assert peer.main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result["skipped"]) == {"vllm", "llama.cpp"}
    assert all("scripts/peers.sh" in why for why in result["skipped"].values())
    rows = {(r["system"], r["prompt"]): r for r in result["rows"]}
    assert set(rows) == {(s, n) for s in ("helix", "transformers") for n in (40, 64)}
    for n in (40, 64):
        h, hf = rows[("helix", n)], rows[("transformers", n)]
        assert h["rounds"] == hf["rounds"] == 2 and h["prefill_tok_s"] > 0 and h["decode_ms"] > 0
        assert hf["prefill_tok_s"] is None  # transformers: decode only
        assert hf["helix_decode_speedup"] == pytest.approx(hf["decode_ms"] / h["decode_ms"])
    assert _png(tmp_path / "p.png") and _png(tmp_path / "p-decode.png")
    if Path("/proc/vmstat").exists():  # each pass records what it swapped (MiB in, out): a peer's hidden cost
        saved = json.loads((tmp_path / "p.json").read_text())
        assert saved["meta"]["memory_gib"]["ram"] > 0
        assert all(len(p["swap_mib"]) == 2 and min(p["swap_mib"]) >= 0 for p in saved["passes"])


def test_peer_suite_passes_the_precision_to_helix(tmp_path, capsys):
    from helix import ops
    from helix.bench import decode, peer

    paths = ops.kernel_paths()
    if paths.get("avx512_bf16") != "" and paths.get("amx") != "":
        pytest.skip("no AVX512_BF16 or AMX-BF16 on this CPU: precision bf16 is refused")
    model = decode.ensure_model("tiny", tmp_path / "model")
    capsys.readouterr()
    args = ["--model", "tiny", "--model-dir", str(model), "--systems", "helix", "--prompts", "40"]
    args += ["--threads", "1", "--rounds", "1", "--steps", "1", "--precision", "bf16", "--json"]
    assert peer.main([*args, "--out", str(tmp_path / "p.json"), "--png", str(tmp_path / "p.png")]) == 0
    (row,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert row["system"] == "helix" and row["prefill_tok_s"] > 0
    assert "precision bf16" in json.loads((tmp_path / "p.json").read_text())["meta"]["systems"]["helix"]


def test_prefill_suite(tmp_path, capsys):
    from helix.bench import prefill
    from helix.config import ModelConfig

    model = tmp_path / "model"
    args = [
        "--model",
        "tiny",
        "--model-dir",
        str(model),
        "--prompts",
        "40,100",
        "--configs",
        "cp1,cp2",
        "--rounds",
        "2",
        "--chunk",
        "32",
        "--forms",
        "absorbed,auto",
        "--timeout",
        "120",
        "--out",
        str(tmp_path / "f.json"),
        "--png",
        str(tmp_path / "f.png"),
    ]
    assert prefill.main(args) == 0
    rows = json.loads((tmp_path / "f.json").read_text())["rows"]
    assert {(r["config"], r["prompt"], r["form"]) for r in rows} == {
        (c, n, f) for c in ("cp1", "cp2") for n in (40, 100) for f in ("absorbed", "auto")
    }
    cfg = ModelConfig.from_pretrained(model)
    for r in rows:
        assert len(r["seconds"]) == 2 and r["tokens_per_s"] == pytest.approx(r["prompt"] / r["median_s"])
        assert sum(r["shares"].values()) == pytest.approx(1.0)
        assert r["wuv_before_exchange"] == (r["config"] == "cp1")  # the engine's default
        assert r["flops"] == prefill.prefill_flops(cfg, r["prompt"], 32, r["wuv_before_exchange"])
        executed = r["flops"]["linear"] + r["flops"][f"attention_{r['form']}"]
        assert r["gflops"] == pytest.approx(executed / r["median_s"] / 1e9)
        assert 0 < r["fraction_of_bf16_ceiling"] and r["bf16_ceiling_gflops"] > 0
    assert _png(tmp_path / "f.png")


def test_prefill_flops_counts_causal_pairs_and_the_cheaper_form():
    from helix.bench.prefill import prefill_flops
    from helix.config import ModelConfig
    from helix.tiny import TINY_DEFAULT_CONFIG

    cfg = ModelConfig.from_dict(TINY_DEFAULT_CONFIG)
    H, R, P, L = cfg.num_attention_heads, cfg.kv_lora_rank, cfg.qk_rope_head_dim, cfg.num_hidden_layers
    one = prefill_flops(cfg, 10, 10)
    assert one["attention"] == 2 * H * (2 * R + P) * 55 * L  # 10 * 11 / 2 causal pairs
    # Chunking does not change the pairs; the per-chunk cheaper form never costs more than the absorbed one.
    assert prefill_flops(cfg, 10, 3)["attention"] == one["attention"]
    for n, chunk in ((10, 10), (1000, 64), (5000, 512)):
        for wuv in (False, True):
            f = prefill_flops(cfg, n, chunk, wuv)
            assert f["attention_auto"] in (f["attention"], f["attention_expanded"]) or chunk < n
            assert 0 < f["attention_auto"] <= f["attention"]
            assert f["attention_absorbed"] == f["attention"] and f["linear"] > 0


# ---- the registry: `python -m helix bench` reaches every suite ------------------------------------------


def test_every_suite_is_registered_and_reachable(capsys):
    import importlib

    from helix import cli
    from helix.bench import SUITES

    assert {"cuda_ops", "cuda_layer", "all", "report"} <= set(SUITES)
    for name, (module, what) in SUITES.items():
        assert callable(importlib.import_module(module).main), name
        assert what, name
    with pytest.raises(SystemExit) as info:
        cli.main(["bench"])
    assert info.value.code == 2
    listing = capsys.readouterr().err
    assert all(name in listing for name in SUITES)


@pytest.mark.skipif(_has_gpu(), reason="a CUDA GPU is visible: the CUDA suites would run")
@pytest.mark.parametrize("suite", ["cuda_ops", "cuda_layer"])
def test_cuda_suites_without_a_gpu_fail_in_one_line(suite, capsys):
    from helix import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["bench", suite, "--smoke"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"helix bench {suite}: error: no CUDA device visible" in err and "Traceback" not in err


def test_bench_all_runs_registered_suites_that_report_renders(tmp_path, capsys):
    from helix.bench import SUITES, report, run_all

    for _, args in run_all.passes(tmp_path, 2):
        assert args[0] in SUITES
    meta = {"cpu": "test CPU", "threads": 1, "loadavg_1_5_15": [0.5, 0.5, 0.5], "date": "today"}
    row = {"system": "vllm", "threads": 1, "prompt": 512, "prefill_tok_s": 40.0, "helix_prefill_speedup": 0.5}
    row |= {"decode_ms": 6.0, "helix_decode_speedup": 3.0}
    common.write_json(tmp_path / "peer.json", {"meta": meta, "rows": [row]})
    assert report.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "### peer.json" in out and "| vllm | 1 | 512 | 40.0 | 0.50 | 6.0 | 3.00 |" in out

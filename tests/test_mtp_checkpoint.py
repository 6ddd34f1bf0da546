"""The multi-token-prediction (MTP) layer in checkpoints: its config key, its tensors (plain, FP8, shards,
both config layouts), the errors that refuse speculative decoding without it, and its sharding over the
ranks (reassembled shards equal the checkpoint's tensors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helix.checkpoint import Checkpoint, CheckpointError, SafetensorsFile, require_mtp
from helix.config import ModelConfig, ModelConfigError
from helix.model_tensors import expected_mtp_tensors, expected_tensors, is_fp8_quantizable
from helix.sharding import shard_mtp_weights, shard_weights, vocab_shard
from helix.tiny import TINY_DEFAULT_CONFIG, make_tiny_model, write_safetensors

MTP = "model.layers.4."  # the tiny model's MTP layer (num_hidden_layers = 4)


def _config(**overrides) -> ModelConfig:
    return ModelConfig.from_dict({**TINY_DEFAULT_CONFIG, **overrides}, source="test")


def test_config_key_and_alias():
    assert _config().num_nextn_predict_layers == 0
    assert _config(num_nextn_predict_layers=None).num_nextn_predict_layers == 0
    assert _config(num_nextn_predict_layers=1).num_nextn_predict_layers == 1
    assert _config(num_mtp_layers=1, num_nextn_predict_layers=None).num_nextn_predict_layers == 1
    assert _config(num_mtp_layers=1, num_nextn_predict_layers=1).mtp_layer_index == 4
    with pytest.raises(ModelConfigError, match="num_nextn_predict_layers=1 and its alias num_mtp_layers=2"):
        _config(num_nextn_predict_layers=1, num_mtp_layers=2)
    with pytest.raises(ModelConfigError, match="num_mtp_layers='1' must be an integer"):
        _config(num_mtp_layers="1")
    with pytest.raises(ModelConfigError, match="num_nextn_predict_layers=-1 must be a non-negative integer"):
        _config(num_nextn_predict_layers=-1)


def test_expected_mtp_tensors():
    config = _config(num_nextn_predict_layers=1)
    mtp = expected_mtp_tensors(config)
    assert expected_mtp_tensors(_config()) == {}
    assert mtp[MTP + "eh_proj.weight"] == (256, 512)
    assert mtp[MTP + "embed_tokens.weight"] == mtp[MTP + "shared_head.head.weight"] == (1000, 256)
    assert (
        mtp[MTP + "enorm.weight"]
        == mtp[MTP + "hnorm.weight"]
        == mtp[MTP + "shared_head.norm.weight"]
        == (256,)
    )
    # The block has exactly a MoE main layer's tensors (layer 1 is MoE in the tiny model).
    block = {n[len(MTP) :] for n in mtp} - {"embed_tokens.weight", "enorm.weight", "hnorm.weight"}
    block -= {"eh_proj.weight", "shared_head.norm.weight", "shared_head.head.weight"}
    layer1 = {
        n[len("model.layers.1.") :] for n in expected_tensors(config) if n.startswith("model.layers.1.")
    }
    assert block == layer1
    assert not set(mtp) & set(expected_tensors(config))
    assert is_fp8_quantizable(MTP + "self_attn.o_proj.weight")
    assert not is_fp8_quantizable(MTP + "eh_proj.weight")
    assert not is_fp8_quantizable(MTP + "shared_head.head.weight")


@pytest.fixture(scope="module")
def plain_and_fp8(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mtp_models")
    make_tiny_model(root / "plain", seed=7, mtp=True)
    make_tiny_model(
        root / "fp8", seed=7, mtp=True, fp8=True, shards=3, dtype="bfloat16", layout="transformers5"
    )
    return root / "plain", root / "fp8"


def test_mtp_weights_load_plain_fp8_shards(plain_and_fp8):
    plain_dir, fp8_dir = plain_and_fp8
    config = require_mtp(plain_dir)
    assert config.num_nextn_predict_layers == 1
    fp8_config = require_mtp(fp8_dir)  # transformers 5 layout, FP8 block, 3 files
    with Checkpoint.open(plain_dir, config) as a, Checkpoint.open(fp8_dir, fp8_config) as b:
        assert set(a.names()) == set(expected_tensors(config)) | set(expected_mtp_tensors(config))
        w, w8 = a.load_mtp_weights(config), b.load_mtp_weights(fp8_config)
        assert set(w) == set(w8) == set(expected_mtp_tensors(config))
        for name, arr in w.items():
            assert arr.shape == expected_mtp_tensors(config)[name]
            if is_fp8_quantizable(name):
                assert b.dtype(name) == "F8_E4M3"
                np.testing.assert_allclose(w8[name], arr, rtol=0.07, atol=2e-3)  # e4m3: 3 mantissa bits
            else:
                np.testing.assert_allclose(w8[name], arr, rtol=2.0**-8, atol=0)  # bf16 storage
        # loaded as given: the tiny model draws the MTP layer's embedding and head apart from the model's
        assert not np.allclose(w[MTP + "shared_head.head.weight"], a.get("lm_head.weight"))
        assert not np.allclose(w[MTP + "embed_tokens.weight"], a.get("model.embed_tokens.weight"))
        assert not np.allclose(w[MTP + "enorm.weight"], 1.0)
    # a config that declares no MTP layer hides it
    with Checkpoint.open(plain_dir, _config()) as c:
        assert not any(n.startswith(MTP) for n in c.names())


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """A copy of a single-file tiny model whose tensors went through ``edit(dict)``."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    f = SafetensorsFile.open(src / "model.safetensors")
    tensors = {n: f.array(n) for n in f.tensors}
    edit(tensors)
    write_safetensors(dst / "model.safetensors", tensors)
    return dst


def test_speculative_decoding_refused_with_clear_errors(tmp_path, plain_and_fp8):
    plain_dir, _ = plain_and_fp8
    no_mtp = tmp_path / "no_mtp"
    make_tiny_model(no_mtp, seed=1)
    with pytest.raises(
        CheckpointError, match=r"config.json has num_nextn_predict_layers = 0 \(absent or 0\)"
    ):
        require_mtp(no_mtp)
    # The config declares the layer, the checkpoint has none of it: every tensor counted, the first named.
    declared = json.loads((no_mtp / "config.json").read_text())
    (no_mtp / "config.json").write_text(json.dumps({**declared, "num_nextn_predict_layers": 1}))
    n = len(expected_mtp_tensors(ModelConfig.from_pretrained(no_mtp)))
    with pytest.raises(CheckpointError, match=rf"layer 4 .* is incomplete: missing {n} of its {n} tensors: "):
        require_mtp(no_mtp)
    declared_config = ModelConfig.from_pretrained(no_mtp)
    Checkpoint.open(no_mtp, declared_config).validate(declared_config)  # plain decoding still loads it

    one_missing = _rewrite(plain_dir, tmp_path / "one_missing", lambda t: t.pop(MTP + "eh_proj.weight"))
    with pytest.raises(CheckpointError, match=rf"missing 1 of its {n} tensors: '{MTP}eh_proj.weight'$"):
        require_mtp(one_missing)

    def bad_shape(t):
        t[MTP + "eh_proj.weight"] = t[MTP + "eh_proj.weight"][:, :256].copy()

    with pytest.raises(
        CheckpointError, match=rf"tensor '{MTP}eh_proj.weight' has shape \[256, 256\].*\[256, 512\]"
    ):
        require_mtp(_rewrite(plain_dir, tmp_path / "bad_shape", bad_shape))


def test_fp8_mtp_tensor_without_scale_is_refused(tmp_path):
    src = tmp_path / "fp8"
    make_tiny_model(src, seed=2, mtp=True, fp8=True)
    name = MTP + "self_attn.o_proj.weight"
    bad = _rewrite(src, tmp_path / "no_scale", lambda t: t.pop(name + "_scale_inv"))
    with pytest.raises(CheckpointError, match=rf"FP8 tensor '{name}' has no '{name}_scale_inv'"):
        require_mtp(bad)


@pytest.mark.parametrize(("tp", "cp", "etp"), [(1, 1, False), (1, 2, False), (2, 2, False), (1, 4, True)])
def test_shard_mtp_weights_reassemble(plain_and_fp8, tp, cp, etp):
    """Every rank's shards put back together give the checkpoint's MTP tensors: vocabulary rows for the
    embedding and the head, heads (TP) for q_b, head chunks of all N ranks for o_proj, experts (EP) or their
    intermediate rows (expert TP), replicated norms, eh_proj and router; the block's engine names are a
    MoE main layer's."""
    plain_dir, _ = plain_and_fp8
    config = ModelConfig.from_pretrained(plain_dir)
    ckpt = Checkpoint.open(plain_dir, config)
    w = ckpt.load_mtp_weights(config)
    n = tp * cp
    shards = [dict(shard_mtp_weights(config, ckpt.get, tp, cp, r, etp)) for r in range(n)]
    extras = {"embed_tokens", "enorm", "hnorm", "eh_proj", "shared_head.norm", "shared_head.head"}
    main_layer1 = {
        k[9:] for k, _ in shard_weights(config, ckpt.get, tp, cp, 0, etp) if k.startswith("layers.1.")
    }
    assert {k[9:] for k in shards[0]} == main_layer1 | extras

    V, vs = config.vocab_size, vocab_shard(config.vocab_size, n)
    for name in ("embed_tokens", "shared_head.head"):
        rows = np.concatenate([s[f"layers.4.{name}"] for s in shards])
        assert rows.shape == (vs * n, config.hidden_size)
        np.testing.assert_array_equal(rows[:V], w[MTP + name + ".weight"])
        assert not rows[V:].any()
    for ours, theirs in (("enorm", "enorm"), ("hnorm", "hnorm"), ("eh_proj", "eh_proj"),
                         ("shared_head.norm", "shared_head.norm"), ("gate", "mlp.gate")):  # fmt: skip
        for s in shards:
            np.testing.assert_array_equal(s[f"layers.4.{ours}"], w[MTP + theirs + ".weight"])
    q_b = np.concatenate([shards[t * cp]["layers.4.q_b_proj"] for t in range(tp)])
    np.testing.assert_array_equal(q_b, w[MTP + "self_attn.q_b_proj.weight"])
    o_proj = np.concatenate([s["layers.4.o_proj"] for s in shards], axis=1)
    np.testing.assert_array_equal(o_proj, w[MTP + "self_attn.o_proj.weight"])
    # gate_up [E_local, 2 F_local, D] (gate rows, then up rows); down [E_local, D, F_local]
    gate_up = [s["layers.4.experts.gate_up_proj"] for s in shards]
    down = [s["layers.4.experts.down_proj"] for s in shards]
    for e in range(config.n_routed_experts):
        x = f"{MTP}mlp.experts.{e}."
        if etp:
            f = gate_up[0].shape[1] // 2
            gate, up = (np.concatenate([g[e, h * f : (h + 1) * f] for g in gate_up]) for h in (0, 1))
            down_e = np.concatenate([d[e] for d in down], axis=1)
        else:
            per = config.n_routed_experts // n
            g, down_e = gate_up[e // per][e % per], down[e // per][e % per]
            gate, up = np.split(g, 2)
        np.testing.assert_array_equal(gate, w[x + "gate_proj.weight"])
        np.testing.assert_array_equal(up, w[x + "up_proj.weight"])
        np.testing.assert_array_equal(down_e, w[x + "down_proj.weight"])


def test_shard_mtp_weights_without_mtp_layer(plain_and_fp8):
    config = _config()
    with pytest.raises(ValueError, match="num_nextn_predict_layers = 0: the model has no MTP layer"):
        next(shard_mtp_weights(config, lambda *a: None, 1, 1, 0))

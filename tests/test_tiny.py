"""helix.tiny: the embedded default model and its command-line entry."""

from __future__ import annotations

import json

import numpy as np
from helix.checkpoint import Checkpoint
from helix.reference_model import ReferenceModel, yarn_inv_freq
from helix.tiny import main, make_tiny_model


def test_cli_writes_the_same_model_as_the_api(tmp_path, capsys):
    assert main([str(tmp_path / "cli"), "--seed", "3"]) == 0
    assert "4 layers" in capsys.readouterr().out
    make_tiny_model(tmp_path / "api", seed=3)
    for f in ("config.json", "model.safetensors"):
        assert (tmp_path / "cli" / f).read_bytes() == (tmp_path / "api" / f).read_bytes()


def test_default_exercises_every_feature(tmp_path):
    cfg = make_tiny_model(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["rope_scaling"]["type"] == "yarn" and "rope_theta" in raw  # original layout
    assert cfg.q_lora_rank is not None
    assert [cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers)] == [False, True, True, True]
    assert cfg.n_group > 1 and cfg.topk_group < cfg.n_group and cfg.n_shared_experts == 1
    inv_freq, _ = yarn_inv_freq(cfg)
    P = cfg.qk_rope_head_dim
    assert not np.allclose(inv_freq, cfg.rope_theta ** (-np.arange(0, P, 2) / P))  # YaRN changes frequencies
    assert cfg.softmax_scale > 1.8 * cfg.qk_head_dim**-0.5  # mscale^2 rule active
    # Greedy decoding has clear winners: the top-2 logit gap is well above float32 noise.
    ref = ReferenceModel(cfg, Checkpoint.open(tmp_path, cfg).load_weights(cfg, dtype=np.float64))
    out = ref.generate_greedy([[0, 1, 2, 3]], 16)
    top2 = np.sort(out.step_logits[0], axis=-1)[:, -2:]
    assert np.min(top2[:, 1] - top2[:, 0]) > 1e-3

"""Fuzzing helix.ModelConfig.from_pretrained (config.json): a valid ModelConfig or a ModelConfigError naming
the file, for configs near the tiny model's with fields dropped or replaced by random JSON values (both
RoPE layouts, YaRN and FP8 sections included), mutated bytes, non-UTF-8 and deeply nested input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from fuzz_support import FUZZ_SETTINGS, deep_json, expect_valid_or, json_values, mutate_bytes
from helix.config import ModelConfig, ModelConfigError
from helix.tiny import TINY_DEFAULT_CONFIG
from hypothesis import given
from hypothesis import strategies as st

FP8_SECTION = {
    "quant_method": "fp8",
    "fmt": "e4m3",
    "weight_block_size": [128, 128],
    "activation_scheme": "dynamic",
}
T5_ROPE = {
    "rope_type": "yarn",
    "rope_theta": 10000.0,
    "factor": 40.0,
    "original_max_position_embeddings": 512,
}


def _mutated_section(base: dict) -> st.SearchStrategy:
    """A dict section with each key kept, dropped or given a random value, and maybe an extra key."""
    return st.fixed_dictionaries(
        {}, optional={k: st.one_of(st.just(v), json_values) for k, v in base.items()}
    )


@st.composite
def configs(draw) -> dict:
    base = dict(TINY_DEFAULT_CONFIG)
    if draw(st.booleans()):
        base["quantization_config"] = dict(FP8_SECTION)
    if draw(st.booleans()):
        base.pop("rope_scaling")
        base["rope_parameters"] = dict(T5_ROPE)
    out = {}
    for key, value in base.items():
        choice = draw(st.sampled_from(["keep", "keep", "keep", "drop", "random", "section"]))
        if choice == "keep":
            out[key] = value
        elif choice == "random":
            out[key] = draw(json_values)
        elif choice == "section" and isinstance(value, dict):
            out[key] = draw(_mutated_section(value))
        elif choice == "section":
            out[key] = draw(
                st.sampled_from([0, -1, 1, 2**64, 1.5, float("nan"), float("inf"), "1", None, [value]])
            )
    return out


def _check_valid(cfg: ModelConfig | None) -> None:
    if cfg is None:
        return
    assert cfg.vocab_size >= 1 and cfg.num_hidden_layers >= 1 and cfg.num_attention_heads >= 1
    assert cfg.n_routed_experts % cfg.n_group == 0
    assert math.isfinite(cfg.softmax_scale) and cfg.softmax_scale > 0
    assert math.isfinite(cfg.rope_attention_factor)


def _load(path: Path) -> None:
    _check_valid(expect_valid_or(ModelConfigError, path, lambda: ModelConfig.from_pretrained(path.parent)))


@FUZZ_SETTINGS
@given(cfg=configs())
def test_random_fields(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(cfg), encoding="utf-8")
    _load(path)


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_bytes(tmp_path_factory, data):
    raw = data.draw(mutate_bytes(json.dumps(TINY_DEFAULT_CONFIG).encode("utf-8")))
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_bytes(raw)
    _load(path)


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deeply_nested(tmp_path, kind):
    path = tmp_path / "config.json"
    path.write_text(deep_json(100_000, kind))
    with pytest.raises(ModelConfigError, match=str(path)):
        ModelConfig.from_pretrained(tmp_path)


def test_non_utf8(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(json.dumps(TINY_DEFAULT_CONFIG).encode() + b"\xff")
    with pytest.raises(ModelConfigError, match=str(path)):
        ModelConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("original", [0, -1, "512", None, [512], float("nan"), float("inf"), 1e400, True])
def test_yarn_original_context(tmp_path, original):
    """original_max_position_embeddings feeds a division and int(): every bad value is a ModelConfigError."""
    d = json.loads(json.dumps(TINY_DEFAULT_CONFIG))
    d["rope_scaling"]["original_max_position_embeddings"] = original
    d["rope_scaling"].pop("factor")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ModelConfigError, match=str(path)):
        ModelConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "key",
    [
        "rope_theta",
        "routed_scaling_factor",
        "rms_norm_eps",
        "rope_scaling.factor",
        "rope_scaling.beta_fast",
        "rope_scaling.mscale",
        "max_position_embeddings",
    ],
)
def test_integer_beyond_float_range(tmp_path, key):
    """JSON integers are unbounded in Python: 10**400 where a float is expected is a ModelConfigError."""
    d = json.loads(json.dumps(TINY_DEFAULT_CONFIG))
    if key == "max_position_embeddings":
        d["rope_scaling"].pop("factor")
    section, _, name = key.rpartition(".")
    (d[section] if section else d)[name] = 10**400
    path = tmp_path / "config.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ModelConfigError, match=str(path)):
        ModelConfig.from_pretrained(tmp_path)

"""Fuzzing helix.ParallelConfig.from_file (JSON and YAML): a valid ParallelConfig or a ConfigError naming
the file, for random documents, mutated bytes, non-UTF-8 and deeply nested input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fuzz_support import FUZZ_SETTINGS, deep_json, expect_valid_or, json_values, mutate_bytes
from helix.parallel_config import KNOWN_CP_TYPES, ConfigError, ParallelConfig
from hypothesis import given
from hypothesis import strategies as st

VALID = {
    "tensor_parallel_size": 2,
    "context_parallel_size": 2,
    "cp_config": {"cp_type": "HELIX", "tokens_per_block": 32},
    "kv_cache_config": {"tokens_per_block": 32, "max_tokens": 65536},
}

# Documents near the valid one: each key kept, dropped or replaced by a random JSON value, plus extras.
_value_or_valid = lambda v: st.one_of(st.just(v), json_values)  # noqa: E731
near_valid = st.fixed_dictionaries(
    {},
    optional={
        "tensor_parallel_size": _value_or_valid(2),
        "context_parallel_size": _value_or_valid(2),
        "cp_config": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {}, optional={"cp_type": _value_or_valid("HELIX"), "tokens_per_block": _value_or_valid(32)}
            ),
        ),
        "kv_cache_config": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {}, optional={"tokens_per_block": _value_or_valid(32), "max_tokens": _value_or_valid(4096)}
            ),
        ),
    },
)
documents = st.one_of(near_valid, json_values, st.dictionaries(st.text(max_size=20), json_values, max_size=5))


def _check_valid(cfg: ParallelConfig | None) -> None:
    if cfg is None:
        return
    for v in (cfg.tensor_parallel_size, cfg.context_parallel_size, cfg.tokens_per_block):
        assert isinstance(v, int) and not isinstance(v, bool) and v >= 1
    assert cfg.max_tokens is None or (isinstance(cfg.max_tokens, int) and cfg.max_tokens >= 1)
    assert cfg.cp_type in KNOWN_CP_TYPES
    assert ParallelConfig.from_dict(cfg.to_dict(), source=cfg.source) == cfg


def _load(path: Path) -> ParallelConfig | None:
    cfg = expect_valid_or(ConfigError, path, lambda: ParallelConfig.from_file(path))
    _check_valid(cfg)
    return cfg


@FUZZ_SETTINGS
@given(doc=documents, suffix=st.sampled_from([".json", ".yaml", ".yml"]))
def test_random_documents(tmp_path_factory, doc, suffix):
    path = tmp_path_factory.mktemp("pc") / f"parallel{suffix}"
    text = json.dumps(doc) if suffix == ".json" else yaml.safe_dump(doc)
    path.write_text(text, encoding="utf-8")
    _load(path)


@FUZZ_SETTINGS
@given(data=st.data(), suffix=st.sampled_from([".json", ".yaml"]))
def test_mutated_bytes(tmp_path_factory, data, suffix):
    valid = json.dumps(VALID) if suffix == ".json" else yaml.safe_dump(VALID)
    raw = data.draw(mutate_bytes(valid.encode("utf-8")))
    path = tmp_path_factory.mktemp("pc") / f"parallel{suffix}"
    path.write_bytes(raw)
    _load(path)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deeply_nested(tmp_path, suffix, kind):
    path = tmp_path / f"parallel{suffix}"
    path.write_text(deep_json(100_000, kind))
    with pytest.raises(ConfigError, match=str(path)):
        ParallelConfig.from_file(path)


def test_non_utf8(tmp_path):
    path = tmp_path / "parallel.yaml"
    path.write_bytes(b"tensor_parallel_size: \xff\xfe 2\n")
    with pytest.raises(ConfigError, match=str(path)):
        ParallelConfig.from_file(path)

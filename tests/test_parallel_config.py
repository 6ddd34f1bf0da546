"""helix.ParallelConfig: JSON / YAML in the reference implementation's keys, and every error path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from helix.mapping import Mapping
from helix.parallel_config import ConfigError, ParallelConfig

FULL = {
    "tensor_parallel_size": 2,
    "context_parallel_size": 2,
    "cp_config": {"cp_type": "HELIX", "tokens_per_block": 64},
    "kv_cache_config": {"tokens_per_block": 64, "max_tokens": 4096},
}


def write(tmp_path: Path, d: Any, fmt: str) -> Path:
    path = tmp_path / f"parallel.{fmt}"
    path.write_text(json.dumps(d) if fmt == "json" else yaml.safe_dump(d))
    return path


@pytest.fixture(params=["json", "yaml", "yml"])
def fmt(request) -> str:
    return request.param


def test_full_config_from_file(tmp_path, fmt):
    path = write(tmp_path, FULL, fmt)
    cfg = ParallelConfig.from_file(path)
    assert (cfg.tensor_parallel_size, cfg.context_parallel_size, cfg.cp_type) == (2, 2, "HELIX")
    assert (cfg.tokens_per_block, cfg.max_tokens, cfg.world_size, cfg.source) == (64, 4096, 4, str(path))
    assert cfg.to_dict() == FULL
    assert ParallelConfig.from_dict(cfg.to_dict()) == ParallelConfig.from_dict(FULL)
    assert cfg.mapping(3) == Mapping(4, 2, 2, 3)
    assert cfg.mapping(3).cp_group == [2, 3]


def test_yaml_as_users_write_it(tmp_path):
    path = tmp_path / "helix.yaml"
    path.write_text("tensor_parallel_size: 1\ncontext_parallel_size: 4\ncp_config:\n  cp_type: HELIX\n")
    cfg = ParallelConfig.from_file(path)
    assert (cfg.world_size, cfg.tokens_per_block, cfg.max_tokens) == (4, 32, None)


def test_defaults():
    for cfg in (ParallelConfig(), ParallelConfig.from_dict({})):
        assert (cfg.tensor_parallel_size, cfg.context_parallel_size, cfg.tokens_per_block) == (1, 1, 32)
        assert cfg.cp_type == "HELIX" and cfg.world_size == 1


def test_empty_yaml_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert ParallelConfig.from_file(path).world_size == 1


@pytest.mark.parametrize("section", ["cp_config", "kv_cache_config"])
def test_tokens_per_block_from_either_section(section):
    assert ParallelConfig.from_dict({section: {"tokens_per_block": 16}}).tokens_per_block == 16


def test_other_cp_type_allowed_without_cp():
    assert ParallelConfig.from_dict({"cp_config": {"cp_type": "ULYSSES"}}).cp_type == "ULYSSES"


def expect_error(tmp_path: Path, fmt: str, d: Any, key: str, *fragments: str) -> ConfigError:
    path = write(tmp_path, d, fmt)
    with pytest.raises(ConfigError) as info:
        ParallelConfig.from_file(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.key == key and err.source == str(path)
    message = str(err)
    assert message.startswith(f"{path}: {key}: " if key else f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, message
    return err


def test_non_helix_cp_type_with_cp(tmp_path, fmt):
    d = {**FULL, "cp_config": {"cp_type": "RING"}}
    expect_error(tmp_path, fmt, d, "cp_config.cp_type", "RING", "context_parallel_size 2", "HELIX only")


def test_unknown_cp_type(tmp_path, fmt):
    expect_error(
        tmp_path,
        fmt,
        {"cp_config": {"cp_type": "helix2"}},
        "cp_config.cp_type",
        "unknown cp_type",
        "HELIX, ULYSSES, STAR, RING",
    )


def test_cp_type_wrong_type(tmp_path, fmt):
    expect_error(tmp_path, fmt, {"cp_config": {"cp_type": 3}}, "cp_config.cp_type", "must be a string")


def test_tokens_per_block_differ(tmp_path, fmt):
    d = {**FULL, "kv_cache_config": {"tokens_per_block": 32}}
    expect_error(
        tmp_path, fmt, d, "cp_config.tokens_per_block", "64 differs from kv_cache_config.tokens_per_block 32"
    )


@pytest.mark.parametrize(
    "d,key",
    [
        ({"tensor_parallel_size": 0}, "tensor_parallel_size"),
        ({"context_parallel_size": -2}, "context_parallel_size"),
        ({"cp_config": {"tokens_per_block": 0}}, "cp_config.tokens_per_block"),
        ({"kv_cache_config": {"tokens_per_block": -32}}, "kv_cache_config.tokens_per_block"),
        ({"kv_cache_config": {"max_tokens": 0}}, "kv_cache_config.max_tokens"),
    ],
)
def test_non_positive(tmp_path, fmt, d, key):
    expect_error(tmp_path, fmt, d, key, "must be positive")


@pytest.mark.parametrize(
    "d,key,suggestion",
    [
        ({"tensor_paralel_size": 2}, "tensor_paralel_size", "did you mean 'tensor_parallel_size'?"),
        ({"context_parallel": 2}, "context_parallel", "did you mean 'context_parallel_size'?"),
        ({"cp_config": {"cptype": "HELIX"}}, "cp_config.cptype", "did you mean 'cp_type'?"),
        ({"kv_cache_config": {"max_token": 8}}, "kv_cache_config.max_token", "did you mean 'max_tokens'?"),
        (
            {"kv_cache_config": {"tokens_per_blok": 8}},
            "kv_cache_config.tokens_per_blok",
            "did you mean 'tokens_per_block'?",
        ),
        ({"pipeline_parallel_size": 2}, "pipeline_parallel_size", "unknown key"),
        ({"zzz": 1}, "zzz", "known keys: tensor_parallel_size, context_parallel_size"),
    ],
)
def test_unknown_keys(tmp_path, fmt, d, key, suggestion):
    expect_error(tmp_path, fmt, d, key, "unknown key", suggestion)


@pytest.mark.parametrize(
    "d,key,fragment",
    [
        ({"tensor_parallel_size": "2"}, "tensor_parallel_size", "must be an integer, got str '2'"),
        ({"context_parallel_size": 2.0}, "context_parallel_size", "must be an integer, got float"),
        ({"context_parallel_size": True}, "context_parallel_size", "must be an integer, got bool"),
        ({"cp_config": {"tokens_per_block": "32"}}, "cp_config.tokens_per_block", "must be an integer"),
        ({"kv_cache_config": {"max_tokens": [1]}}, "kv_cache_config.max_tokens", "must be an integer"),
        ({"cp_config": "HELIX"}, "cp_config", "must be a mapping"),
        ({"kv_cache_config": [32]}, "kv_cache_config", "must be a mapping"),
    ],
)
def test_wrong_types(tmp_path, fmt, d, key, fragment):
    expect_error(tmp_path, fmt, d, key, fragment)


def test_top_level_not_a_mapping(tmp_path, fmt):
    expect_error(tmp_path, fmt, [1, 2], "", "must be a mapping, got list")


def test_unreadable_and_malformed_files(tmp_path):
    missing = tmp_path / "missing.json"
    with pytest.raises(ConfigError, match=f"{missing}: cannot read the file"):
        ParallelConfig.from_file(missing)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{tensor_parallel_size: 2")
    with pytest.raises(ConfigError, match=f"{bad_json}: invalid JSON"):
        ParallelConfig.from_file(bad_json)
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("cp_config: [unclosed\n")
    with pytest.raises(ConfigError, match=f"{bad_yaml}: invalid YAML"):
        ParallelConfig.from_file(bad_yaml)
    toml = tmp_path / "cfg.toml"
    toml.write_text("tensor_parallel_size = 2\n")
    with pytest.raises(ConfigError, match="unknown file type '.toml'"):
        ParallelConfig.from_file(toml)


def test_check_world_size(tmp_path):
    cfg = ParallelConfig.from_file(write(tmp_path, FULL, "yaml"))
    cfg.check_world_size(4)
    with pytest.raises(
        ConfigError, match=r"2 \* 2 = 4 ranks, but the job has 3 MPI ranks \(launch with mpiexec -n 4\)"
    ):
        cfg.check_world_size(3)
    with pytest.raises(ConfigError, match=str(tmp_path)):
        cfg.check_world_size(8)


def test_check_heads():
    cfg = ParallelConfig.from_dict(FULL)
    cfg.check_heads(128)
    cfg.check_heads(4)
    with pytest.raises(
        ConfigError,
        match="6 attention heads are not divisible by tensor_parallel_size \\* context_parallel_size = 4",
    ):
        cfg.check_heads(6)
    ParallelConfig.from_dict({"context_parallel_size": 3}).check_heads(3)
    with pytest.raises(ConfigError, match="128 attention heads"):
        ParallelConfig.from_dict({"context_parallel_size": 3}).check_heads(128)


def test_direct_construction_is_validated():
    with pytest.raises(ConfigError, match="<dict>: tensor_parallel_size: must be positive"):
        ParallelConfig(tensor_parallel_size=0)
    with pytest.raises(ConfigError, match="cp_config.cp_type"):
        ParallelConfig(context_parallel_size=2, cp_type="STAR")


def test_exported_from_package():
    import helix

    assert helix.ParallelConfig is ParallelConfig and helix.ConfigError is ConfigError
    assert helix.Mapping is Mapping

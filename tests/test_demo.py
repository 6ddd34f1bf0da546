"""The issue-2 demo at a small size: sharded partial attention + merge equals unsharded attention."""

from __future__ import annotations

import pytest
from helix.demo import DemoConfig, main, run


@pytest.mark.parametrize("shards", [1, 3, 8])
def test_sharded_equals_unsharded(shards):
    r = run(DemoConfig(shards=shards, context=1000, heads=8, kv_lora_rank=64, rope_dim=16))
    assert r["max_err_vs_unsharded_o"] < 1e-5
    assert r["max_err_vs_float64_o"] < 1e-4
    assert r["max_err_vs_float64_lse"] < 1e-4


def test_main_small(capsys):
    assert main(["--shards", "2", "--context", "2048"]) == 0
    assert "sharded == unsharded: yes" in capsys.readouterr().out


def test_config_is_validated():
    with pytest.raises(ValueError):
        DemoConfig(shards=0)

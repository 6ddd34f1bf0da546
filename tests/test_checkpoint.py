"""helix.checkpoint: the safetensors format read directly, slices, FP8 dequantization, shards, MTP kept apart,
validation against config.json, and every error path on crafted files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from helix.checkpoint import (
    Checkpoint,
    CheckpointError,
    SafetensorsFile,
    expected_mtp_tensors,
    expected_tensors,
    is_fp8_quantizable,
)
from helix.config import ModelConfig
from helix.tiny import TINY_DEFAULT_CONFIG, make_tiny_model, quantize_fp8_blockwise, write_safetensors

BF16 = np.dtype(ml_dtypes.bfloat16)
FP8 = np.dtype(ml_dtypes.float8_e4m3fn)


def write_raw(path: Path, header: dict | bytes, data: bytes = b"", header_len: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return path


def test_roundtrip_dtypes_and_slices(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(37, 19)).astype(np.float32)
    tensors = {"f32": a, "f16": a.astype(np.float16), "bf16": a.astype(BF16), "vec": a[0].copy()}
    write_safetensors(tmp_path / "model.safetensors", tensors)
    ck = Checkpoint.open(tmp_path)
    assert ck.names() == sorted(tensors) and ck.dtype("bf16") == "BF16" and ck.shape("f32") == (37, 19)
    for name, t in tensors.items():
        got = ck.get(name, dtype=np.float64)
        np.testing.assert_array_equal(got, t.astype(np.float64))
        assert got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(ck.get("f32", rows=slice(5, 12), cols=slice(3, 17)), a[5:12, 3:17])
    np.testing.assert_array_equal(ck.get("bf16", cols=slice(10, None), dtype=BF16), tensors["bf16"][:, 10:])
    np.testing.assert_array_equal(ck.get("vec", rows=slice(2, 4)), a[0, 2:4])
    assert ck.get("f32", rows=slice(4, 4)).shape == (0, 19)
    with pytest.raises(ValueError, match="step 1"):
        ck.get("f32", rows=slice(0, 10, 2))
    with pytest.raises(CheckpointError, match="missing tensor 'nope'"):
        ck.get("nope")


def test_reads_files_of_the_safetensors_library(tmp_path):
    """Interoperability both ways with the reference implementation of the format."""
    import torch
    from safetensors.numpy import save_file
    from safetensors.torch import load_file

    rng = np.random.default_rng(1)
    a = rng.normal(size=(9, 7)).astype(np.float32)
    save_file({"x": a, "y": a.astype(np.float16)}, str(tmp_path / "model.safetensors"))
    ck = Checkpoint.open(tmp_path)
    np.testing.assert_array_equal(ck.get("x"), a)
    np.testing.assert_array_equal(ck.get("y"), a.astype(np.float16).astype(np.float32))
    q, s = quantize_fp8_blockwise(a, (4, 4))
    write_safetensors(tmp_path / "ours.safetensors", {"b": a.astype(BF16), "q": q, "s": s})
    theirs = load_file(str(tmp_path / "ours.safetensors"))
    assert theirs["q"].dtype == torch.float8_e4m3fn and theirs["b"].dtype == torch.bfloat16
    np.testing.assert_array_equal(theirs["b"].float().numpy(), a.astype(BF16).astype(np.float32))
    np.testing.assert_array_equal(theirs["q"].float().numpy(), q.astype(np.float32))


def numpy_dequant(q: np.ndarray, s: np.ndarray, block: int = 128) -> np.ndarray:
    full = np.repeat(np.repeat(s, block, axis=0), block, axis=1)[: q.shape[0], : q.shape[1]]
    return q.astype(np.float32) * full


def test_fp8_dequant_with_partial_edge_blocks_and_slices(tmp_path):
    rng = np.random.default_rng(2)
    w = (rng.normal(size=(300, 200)) * rng.uniform(0.01, 10, size=(300, 1))).astype(np.float32)
    q, s = quantize_fp8_blockwise(w)
    assert s.shape == (3, 2)  # 300 = 128+128+44 rows, 200 = 128+72 columns
    write_safetensors(tmp_path / "model.safetensors", {"m.weight": q, "m.weight_scale_inv": s})
    ck = Checkpoint.open(tmp_path)
    ref = numpy_dequant(q, s)
    np.testing.assert_array_equal(ck.get("m.weight"), ref)
    # e4m3 keeps 3 mantissa bits (relative step 1/16 when normal); below 2^-6 of the block scale values
    # are subnormal with an absolute step of scale * 2^-9.
    step = np.repeat(np.repeat(s, 128, axis=0), 128, axis=1)[:300, :200]
    assert np.all(np.abs(ref - w) <= np.abs(w) / 16 + step * 2.0**-9)
    for rows, cols in [
        (slice(100, 290), slice(120, 200)),
        (slice(256, 300), slice(0, 5)),
        (slice(127, 129), None),
    ]:
        np.testing.assert_array_equal(
            ck.get("m.weight", rows=rows, cols=cols), ref[rows, slice(None) if cols is None else cols]
        )


def test_tiny_model_validates_and_loads(tmp_path):
    cfg = make_tiny_model(tmp_path)
    ck = Checkpoint.open(tmp_path, cfg)
    ck.validate(cfg)
    assert set(ck.names()) == set(expected_tensors(cfg))
    w = ck.load_weights(cfg)
    assert not np.allclose(w["model.layers.0.input_layernorm.weight"], 1.0)
    assert np.abs(w["model.layers.1.mlp.gate.e_score_correction_bias"]).max() > 0.05


def test_shards_fp8_mtp_match_plain(tmp_path):
    plain = make_tiny_model(tmp_path / "plain", seed=4, mtp=True)
    sharded = make_tiny_model(tmp_path / "sharded", seed=4, shards=3, mtp=True)
    fp8 = make_tiny_model(tmp_path / "fp8", seed=4, fp8=True, shards=2)
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) == 3
    a = Checkpoint.open(tmp_path / "plain", plain)
    b = Checkpoint.open(tmp_path / "sharded", sharded)
    c = Checkpoint.open(tmp_path / "fp8", fp8)
    a.validate(plain)  # the MTP layer (index 4) is not among the model's tensors: test_mtp_checkpoint.py
    b.validate(sharded)
    c.validate(fp8)
    assert set(a.names()) == set(expected_tensors(plain)) | set(expected_mtp_tensors(plain))
    for name in expected_tensors(plain):
        np.testing.assert_array_equal(a.get(name), b.get(name))
        got = c.get(name)
        if is_fp8_quantizable(name):
            assert c.dtype(name) == "F8_E4M3"
            scale = c.get(name + "_scale_inv")
            raw = c.files[0].array(name) if name in c.files[0].tensors else c.files[1].array(name)
            np.testing.assert_array_equal(got, numpy_dequant(np.asarray(raw), scale))
            np.testing.assert_allclose(got, a.get(name), rtol=0.07, atol=2e-3)
        else:
            np.testing.assert_array_equal(got, a.get(name))


def test_writing_is_deterministic(tmp_path):
    make_tiny_model(tmp_path / "a", seed=7)
    make_tiny_model(tmp_path / "b", seed=7)
    make_tiny_model(tmp_path / "c", seed=8)
    data = [(tmp_path / d / "model.safetensors").read_bytes() for d in "abc"]
    assert data[0] == data[1] != data[2]


# ---- errors on crafted files -------------------------------------------------------------------

GOOD = {"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}


@pytest.mark.parametrize(
    "header, data, header_len, match",
    [
        (b"", b"", None, None),  # replaced below by a 5-byte file
        (GOOD, b"\0" * 16, 10_000, "runs past the end"),
        (GOOD, b"\0" * 16, 2**63, "corrupt header length"),
        (b"{not json", b"", None, "not valid JSON"),
        (b"[1, 2]", b"", None, "expected a JSON object"),
        ({"t": {"dtype": "F31", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype"),
        ({"t": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "non-negative"),
        (
            {"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}},
            b"\0" * 12,
            None,
            "outside the data",
        ),
        ({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, b"\0" * 16, None, "needs 16"),
        ({"t": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16]}}, b"\0" * 16, None, "data_offsets"),
        (
            {
                "t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "u": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            b"\0" * 24,
            None,
            "overlaps",
        ),
    ],
)
def test_corrupt_files(tmp_path, header, data, header_len, match):
    path = tmp_path / "model.safetensors"
    if match is None:
        path.write_bytes(b"\x01\x02\x03\x04\x05")
        match = "truncated"
    else:
        write_raw(path, header, data, header_len)
    with pytest.raises(CheckpointError, match=match) as info:
        Checkpoint.open(tmp_path)
    assert str(path) in str(info.value)
    if "tensor '" in str(info.value):
        assert "'t'" in str(info.value) or "'u'" in str(info.value)


def test_truncated_tiny_model(tmp_path):
    make_tiny_model(tmp_path)
    path = tmp_path / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="lm_head.weight.*outside the data|truncated"):
        SafetensorsFile.open(path)


def tiny_cfg(**kw) -> ModelConfig:
    return ModelConfig.from_dict({**TINY_DEFAULT_CONFIG, **kw}, source="cfg.json")


def test_validate_missing_and_shape_mismatch(tmp_path):
    cfg = make_tiny_model(tmp_path, seed=0)
    ck = Checkpoint.open(tmp_path, cfg)
    with pytest.raises(
        CheckpointError,
        match=r"tensor 'model.layers.0.self_attn.q_a_proj.weight' has shape \[96, 256\].*\[64, 256\]",
    ):
        ck.validate(tiny_cfg(q_lora_rank=64))
    with pytest.raises(
        CheckpointError, match="missing tensor 'model.layers.0.self_attn.q_proj.weight'.*cfg.json"
    ):
        ck.validate(tiny_cfg(q_lora_rank=None))
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.4."):
        Checkpoint.open(tmp_path).validate(tiny_cfg(num_hidden_layers=5))
    with pytest.raises(
        CheckpointError, match="model.safetensors: tensor 'model.embed_tokens.weight' has shape"
    ):
        ck.validate(tiny_cfg(vocab_size=1001))


def test_unsupported_dtype(tmp_path):
    write_raw(
        tmp_path / "model.safetensors",
        {"t": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}},
        b"\0" * 8,
    )
    ck = Checkpoint.open(tmp_path)  # known to the format: the header is fine
    with pytest.raises(CheckpointError, match="tensor 't' has unsupported dtype I32"):
        ck.get("t")


def test_unsupported_dtype_in_validate(tmp_path):
    cfg = make_tiny_model(tmp_path)
    ck = Checkpoint.open(tmp_path, cfg)
    weights = {n: ck.get(n) for n in ck.names()}
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(np.float64).view(np.int64)
    (tmp_path / "model.safetensors").unlink()
    header, blobs, off = {}, [], 0
    for n in sorted(weights):
        b = weights[n].tobytes()
        header[n] = {
            "dtype": "I64" if n == "model.norm.weight" else "F32",
            "shape": list(weights[n].shape),
            "data_offsets": [off, off + len(b)],
        }
        blobs.append(b)
        off += len(b)
    write_raw(tmp_path / "model.safetensors", header, b"".join(blobs))
    with pytest.raises(CheckpointError, match="'model.norm.weight' has unsupported dtype I64"):
        Checkpoint.open(tmp_path, cfg).validate(cfg)


def test_fp8_scale_errors(tmp_path):
    q, s = quantize_fp8_blockwise(np.ones((130, 10), np.float32))
    write_safetensors(
        tmp_path / "model.safetensors", {"a.weight": q, "b.weight": q, "b.weight_scale_inv": s[:1]}
    )
    ck = Checkpoint.open(tmp_path)
    with pytest.raises(CheckpointError, match="FP8 tensor 'a.weight' has no 'a.weight_scale_inv'"):
        ck.get("a.weight")
    with pytest.raises(CheckpointError, match=r"'b.weight_scale_inv' has shape \[1, 1\], expected \[2, 1\]"):
        ck.get("b.weight")


def test_fp8_missing_scale_in_validate(tmp_path):
    cfg = make_tiny_model(tmp_path, fp8=True, shards=2)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    name = "model.layers.2.mlp.experts.5.down_proj.weight_scale_inv"
    del index["weight_map"][name]
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        CheckpointError, match="FP8 tensor 'model.layers.2.mlp.experts.5.down_proj.weight' has no"
    ):
        Checkpoint.open(tmp_path, cfg).validate(cfg)


def test_index_errors(tmp_path):
    make_tiny_model(tmp_path, shards=2)
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "lm_head.weight"
    good = index["weight_map"][name]
    other = next(f for f in set(index["weight_map"].values()) if f != good)
    for fname, match in [
        ("missing.safetensors", "mapped to missing file"),
        (other, "does not hold it"),
        ("../x.safetensors", "not a file in the folder"),
    ]:
        index["weight_map"][name] = fname
        index_path.write_text(json.dumps(index))
        with pytest.raises(CheckpointError, match=f"'{name}'.*{match}") as info:
            Checkpoint.open(tmp_path)
        assert str(index_path) in str(info.value)
    index_path.write_text("{")
    with pytest.raises(CheckpointError, match="corrupt index"):
        Checkpoint.open(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Checkpoint.open(tmp_path)

"""Fuzzing helix.checkpoint: safetensors headers, the shard index, and FP8 scale shapes.

Every input gives a readable checkpoint whose arrays match their header, or a CheckpointError naming the
file; never another exception type, a hang, or an allocation sized by an unchecked header field (the
peak of Python-visible allocations, NumPy's included, stays within a bound set by the file's real size).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from fuzz_support import FUZZ_SETTINGS, deep_json, expect_valid_or, json_values, mutate_bytes, peak_allocation
from helix.checkpoint import SAFETENSORS_DTYPES, Checkpoint, CheckpointError, SafetensorsFile
from helix.config import ModelConfig
from helix.tiny import TINY_DEFAULT_CONFIG, write_safetensors
from hypothesis import given
from hypothesis import strategies as st

DTYPES = sorted(SAFETENSORS_DTYPES)
FP8 = np.dtype(ml_dtypes.float8_e4m3fn)


def write_raw(
    path: Path, header: object, data: bytes, header_len: int | None = None, cut: int | None = None
) -> None:
    """A safetensors file from any header value: 8-byte length (the real one unless header_len), JSON, data;
    cut truncates the file to that many bytes."""
    raw = json.dumps(header).encode("utf-8") if not isinstance(header, bytes) else header
    blob = struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data
    path.write_bytes(blob if cut is None else blob[:cut])


def _bound(path: Path) -> int:
    """Allowed peak allocation while reading a file: a few copies of the file plus a fixed slack."""
    return 4 * path.stat().st_size + (2 << 20)


def _read_everything(model_dir: Path, files: list[Path]) -> None:
    """Open the folder and read every tensor whole in float32; check shapes against the headers."""
    ckpt = expect_valid_or(CheckpointError, files + [model_dir], lambda: Checkpoint.open(model_dir))
    if ckpt is None:
        return
    for name in ckpt.names():
        info = ckpt.info(name)
        arr = expect_valid_or(CheckpointError, [info.file], lambda n=name: ckpt.get(n))
        if arr is not None:
            assert arr.shape == info.shape and arr.dtype == np.float32
            assert SAFETENSORS_DTYPES[info.dtype][1] is not None
    ckpt.close()


# ---- safetensors headers ------------------------------------------------------------------------

shapes = st.one_of(
    st.lists(st.integers(0, 6), max_size=3),
    st.lists(
        st.sampled_from([0, 1, 3, 2**31, 2**32 + 1, 2**62, 2**63, 2**64, 10**30, -1]), min_size=1, max_size=3
    ),
    json_values,
)


@st.composite
def safetensors_files(draw) -> tuple[object, bytes, int | None, int | None]:
    """(header, data, header_len override, truncation) around a mostly well-formed layout."""
    header: dict[str, object] = {}
    offset = 0
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "c", "model.norm.weight", "__metadata__", "é\x00"]),
            max_size=4,
            unique=True,
        )
    )
    for name in names:
        dtype = draw(
            st.one_of(st.sampled_from(DTYPES), st.sampled_from(["F32", "BF16", "F8_E4M3"]), json_values)
        )
        shape = draw(shapes)
        nbytes = 0
        if (
            isinstance(dtype, str)
            and dtype in SAFETENSORS_DTYPES
            and isinstance(shape, list)
            and all(isinstance(s, int) for s in shape)
        ):
            nbytes = max(0, (int(np.prod(shape, dtype=object)) * SAFETENSORS_DTYPES[dtype][0] + 7) // 8)
        nbytes = min(nbytes, 1 << 12)
        how = draw(st.sampled_from(["contiguous", "contiguous", "overlap", "random", "junk"]))
        if how == "contiguous":
            offsets: object = [offset, offset + nbytes]
        elif how == "overlap":
            start = draw(st.integers(0, max(offset, 0)))
            offsets = [start, start + nbytes]
        elif how == "random":
            offsets = [draw(st.integers(-2, 2**65)), draw(st.integers(-2, 2**65))]
        else:
            offsets = draw(json_values)
        offset += nbytes if how == "contiguous" else 0
        entry = {"dtype": dtype, "shape": shape, "data_offsets": offsets}
        header[name] = entry if draw(st.integers(0, 9)) else draw(json_values)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.just({"format": "pt"}), json_values))
    data_len = draw(st.sampled_from([offset, offset, max(0, offset - 1), offset + 3, 0]))
    data = draw(st.binary(min_size=min(data_len, 64), max_size=min(data_len, 64))) * (data_len // 64 + 1)
    data = data[:data_len] if data else bytes(data_len)
    header_value: object = header if draw(st.integers(0, 7)) else draw(json_values)
    header_len = draw(
        st.one_of(
            st.none(), st.none(), st.sampled_from([0, 1, 7, 2**32, 2**63, 2**64 - 1]), st.integers(0, 300)
        )
    )
    cut = draw(st.one_of(st.none(), st.none(), st.integers(0, 400)))
    return header_value, data, header_len, cut


@FUZZ_SETTINGS
@given(case=safetensors_files())
def test_random_headers(tmp_path_factory, case):
    header, data, header_len, cut = case
    folder = tmp_path_factory.mktemp("st")
    path = folder / "model.safetensors"
    write_raw(path, header, data, header_len, cut)
    with peak_allocation(_bound(path)):
        f = expect_valid_or(CheckpointError, path, lambda: SafetensorsFile.open(path))
        if f is not None:
            for name, info in f.tensors.items():
                arr = expect_valid_or(CheckpointError, path, lambda n=name: f.array(n))
                if arr is not None:
                    assert arr.shape == info.shape
                    assert arr.nbytes == info.end - info.begin or arr.size == 0
            f.close()
        _read_everything(folder, [path])


def _valid_file_bytes(tmp_path: Path) -> bytes:
    rng = np.random.default_rng(0)
    tensors = {
        "model.embed_tokens.weight": rng.normal(size=(5, 4)).astype(np.float32),
        "model.norm.weight": rng.normal(size=(4,)).astype(ml_dtypes.bfloat16),
        "lm_head.weight": rng.normal(size=(3, 4)).astype(np.float16),
    }
    write_safetensors(tmp_path / "valid.safetensors", tensors)
    return (tmp_path / "valid.safetensors").read_bytes()


@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_bytes(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("st")
    raw = data.draw(mutate_bytes(_valid_file_bytes(folder)))
    (folder / "valid.safetensors").unlink()
    path = folder / "model.safetensors"
    path.write_bytes(raw)
    with peak_allocation(_bound(path)):
        _read_everything(folder, [path])


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deeply_nested_header(tmp_path, kind):
    path = tmp_path / "model.safetensors"
    write_raw(path, deep_json(100_000, kind).encode(), b"")
    with pytest.raises(CheckpointError, match=str(path)):
        SafetensorsFile.open(path)


def test_duplicate_tensor_in_header(tmp_path):
    """JSON keeps the last of two equal keys; a header naming a tensor twice is ambiguous: refused."""
    path = tmp_path / "model.safetensors"
    entry = '{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
    write_raw(path, ('{"a":' + entry + ',"a":' + entry + "}").encode(), bytes(4))
    with pytest.raises(CheckpointError, match="twice"):
        SafetensorsFile.open(path)


def test_duplicate_tensor_across_shards(tmp_path):
    write_safetensors(tmp_path / "x.safetensors", {"a": np.zeros(2, np.float32)})
    write_safetensors(tmp_path / "y.safetensors", {"a": np.ones(2, np.float32)})
    with pytest.raises(CheckpointError, match="also in"):
        Checkpoint.open(tmp_path)


@pytest.mark.parametrize("shape", [[0, 2**64], [2**63, 0], [0, 10**30, 5]])
def test_empty_tensor_with_huge_dimension(tmp_path, shape):
    """Zero elements, so zero bytes, but a dimension no array can have: refused at the header."""
    path = tmp_path / "model.safetensors"
    write_raw(path, {"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}, b"")
    with pytest.raises(CheckpointError, match=str(path)):
        SafetensorsFile.open(path).array("a")


# ---- the shard index ----------------------------------------------------------------------------

file_names = st.one_of(
    st.sampled_from(
        [
            "a.safetensors",
            "a.safetensors",
            "b.safetensors",
            "../a.safetensors",
            "",
            ".",
            "..",
            "sub/a.safetensors",
            "/etc/passwd",
            "a.safetensors\x00",
            "config.json",
        ]
    ),
    st.text(max_size=10),
    json_values,
)


@st.composite
def indexes(draw) -> bytes:
    kind = draw(st.sampled_from(["map", "map", "map", "json", "mutated"]))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    weight_map = draw(st.dictionaries(st.sampled_from(["x", "y", "z", "", "x\x00"]), file_names, max_size=4))
    doc = {"metadata": {"total_size": 24}, "weight_map": weight_map}
    raw = json.dumps(doc).encode()
    return draw(mutate_bytes(raw)) if kind == "mutated" else raw


@FUZZ_SETTINGS
@given(index=indexes())
def test_random_index(tmp_path_factory, index):
    folder = tmp_path_factory.mktemp("idx")
    write_safetensors(
        folder / "a.safetensors", {"x": np.arange(2, dtype=np.float32), "y": np.ones(4, np.float32)}
    )
    index_path = folder / "model.safetensors.index.json"
    index_path.write_bytes(index)
    with peak_allocation(2 << 20):
        ckpt = expect_valid_or(CheckpointError, [index_path], lambda: Checkpoint.open(folder))
        if ckpt is not None:
            for name in ckpt.names():
                assert ckpt.info(name).file == folder / "a.safetensors"
                np.testing.assert_array_equal(ckpt.get(name), np.arange(2) if name == "x" else np.ones(4))


def test_deeply_nested_index(tmp_path):
    write_safetensors(tmp_path / "a.safetensors", {"x": np.zeros(2, np.float32)})
    (tmp_path / "model.safetensors.index.json").write_text(deep_json(100_000, "dict"))
    with pytest.raises(CheckpointError, match="index"):
        Checkpoint.open(tmp_path)


# ---- FP8 weights and their weight_scale_inv ------------------------------------------------------

FP8_NAME = "model.layers.0.mlp.gate_proj.weight"


@st.composite
def fp8_cases(draw):
    rows, cols = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    br, bc = draw(st.integers(1, 16)), draw(st.integers(1, 16))
    want = (-(-rows // br), -(-cols // bc))
    scale_shape = draw(
        st.one_of(
            st.just(want),
            st.just(want),
            st.just((want[1], want[0])),
            st.just((want[0],)),
            st.just((want[0] + 1, want[1])),
            st.just((want[0], want[1], 1)),
            st.just((0, 0)),
        )
    )
    scale_dtype = draw(st.sampled_from(["F32", "F32", "BF16", "F16", "F8_E4M3", "I32", "F64"]))
    with_scale = draw(st.integers(0, 9)) > 0
    q_shape = draw(st.sampled_from([(rows, cols), (rows, cols), (rows * cols,), (rows, cols, 1)]))
    rows_slice = draw(st.one_of(st.none(), st.builds(slice, st.integers(-50, 50), st.integers(-50, 50))))
    cols_slice = draw(st.one_of(st.none(), st.builds(slice, st.integers(-50, 50), st.integers(-50, 50))))
    return rows, cols, br, bc, scale_shape, scale_dtype, with_scale, q_shape, rows_slice, cols_slice


_NP = {
    "F32": np.float32,
    "BF16": ml_dtypes.bfloat16,
    "F16": np.float16,
    "F8_E4M3": FP8,
    "I32": np.int32,
    "F64": np.float64,
}
_CODES = {"F32": "F32", "BF16": "BF16", "F16": "F16", "F8_E4M3": "F8_E4M3", "I32": "I32", "F64": "F64"}


def _write_tensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    header, blobs, offset = {}, [], 0
    for name, (code, arr) in tensors.items():
        blob = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    write_raw(path, header, b"".join(blobs))


@FUZZ_SETTINGS
@given(case=fp8_cases())
def test_fp8_scales(tmp_path_factory, case):
    rows, cols, br, bc, scale_shape, scale_dtype, with_scale, q_shape, rows_slice, cols_slice = case
    folder = tmp_path_factory.mktemp("fp8")
    rng = np.random.default_rng(rows * 1000 + cols)
    q = rng.uniform(-400, 400, size=(rows, cols)).astype(FP8)
    scale = rng.uniform(0.5, 2.0, size=scale_shape).astype(_NP[scale_dtype])
    tensors = {FP8_NAME: ("F8_E4M3", q.reshape(q_shape))}
    if with_scale:
        tensors[FP8_NAME + "_scale_inv"] = (_CODES[scale_dtype], scale)
    path = folder / "model.safetensors"
    _write_tensors(path, tensors)
    cfg_dict = dict(
        TINY_DEFAULT_CONFIG, quantization_config={"quant_method": "fp8", "weight_block_size": [br, bc]}
    )
    config = ModelConfig.from_dict(cfg_dict)
    ckpt = Checkpoint.open(folder, config=config)
    got = expect_valid_or(CheckpointError, path, lambda: ckpt.get(FP8_NAME, rows=rows_slice, cols=cols_slice))
    well_formed = (
        with_scale
        and q_shape == (rows, cols)
        and scale_shape == (-(-rows // br), -(-cols // bc))
        and scale_dtype in ("F32", "BF16", "F16")
    )
    assert (got is not None) == well_formed
    if got is not None:
        r = np.arange(rows)[rows_slice if rows_slice is not None else slice(None)]
        c = np.arange(cols)[cols_slice if cols_slice is not None else slice(None)]
        s = scale.astype(np.float32)[np.ix_(r // br, c // bc)]
        np.testing.assert_array_equal(got, q.astype(np.float32)[np.ix_(r, c)] * s)

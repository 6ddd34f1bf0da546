"""Safetensors checkpoint reader, written on the format itself (memory-mapped, slice-aware).

File format: 8-byte little-endian header length N, N bytes of JSON header
``{name: {"dtype": "BF16", "shape": [r, c], "data_offsets": [begin, end]}, "__metadata__": {...}}``,
then the data; offsets are relative to the first byte after the header. Every header field is
checked against the file size before anything is mapped, so no allocation or read follows an
unchecked header value.

A model folder holds either ``model.safetensors`` or shards listed by ``model.safetensors.index.json``
(``{"weight_map": {tensor name: file name}}``). DeepSeek FP8 weights (``F8_E4M3``) carry
``<name>_scale_inv`` (``<module>.weight_scale_inv``, fp32 ``[ceil(rows/br), ceil(cols/bc)]``) and are
dequantized at load: ``W[i, j] = q[i, j] * scale_inv[i // br, j // bc]`` in float32, edge blocks partial.
Multi-token-prediction layers (``model.layers.L`` with L >= num_hidden_layers) are ignored.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from helix.config import ModelConfig

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "SafetensorsFile",
    "TensorInfo",
    "expected_tensors",
    "is_fp8_quantizable",
    "layer_index",
    "SAFETENSORS_DTYPES",
]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own limit

# Every dtype the format defines, with its item size in bits (for the data_offsets check), and the
# NumPy dtype of the ones this reader can decode (None: known to the format but not supported here).
SAFETENSORS_DTYPES: dict[str, tuple[int, np.dtype | None]] = {
    "F64": (64, np.dtype("<f8")),
    "F32": (32, np.dtype("<f4")),
    "F16": (16, np.dtype("<f2")),
    "BF16": (16, np.dtype(ml_dtypes.bfloat16)),
    "F8_E4M3": (8, np.dtype(ml_dtypes.float8_e4m3fn)),
    "F8_E5M2": (8, None),
    "F8_E8M0": (8, None),
    "F6_E2M3": (6, None),
    "F6_E3M2": (6, None),
    "F4": (4, None),
    "BOOL": (8, None),
    "U8": (8, None),
    "I8": (8, None),
    "I16": (16, None),
    "U16": (16, None),
    "I32": (32, None),
    "U32": (32, None),
    "I64": (64, None),
    "U64": (64, None),
}
_FLOAT_DTYPES = ("F32", "F16", "BF16", "F8_E4M3", "F64")
_SUPPORTED = "supported: F32, F16, BF16, F8_E4M3"

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the tensor."""


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json object_pairs_hook: JSON silently keeps the last of two equal keys; a header or index that
    names a tensor twice is ambiguous, so it is refused."""
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} appears twice")
        out[key] = value
    return out


def _load_json(raw: str) -> object:
    """json.loads refusing duplicate keys; RecursionError (nested past the parser's limit) and duplicates
    come out as ValueError like any other malformed document."""
    try:
        return json.loads(raw, object_pairs_hook=_no_duplicates)
    except RecursionError as exc:
        raise ValueError(f"nested too deeply ({exc})") from exc


def layer_index(name: str) -> int | None:
    """Decoder layer index of a tensor name (``model.layers.L.*``), None for other tensors."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


_FP8_MODULES = frozenset(
    [
        "q_proj",
        "q_a_proj",
        "q_b_proj",
        "kv_a_proj_with_mqa",
        "kv_b_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
)


def is_fp8_quantizable(name: str) -> bool:
    """Whether DeepSeek FP8 checkpoints store this tensor as float8 with a weight_scale_inv: the Linear
    weights of the decoder layers (embedding, lm_head, norms and the router stay unquantized)."""
    parts = name.split(".")
    return name.startswith("model.layers.") and parts[-1] == "weight" and parts[-2] in _FP8_MODULES


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of ``config`` must hold, name -> shape (Linear weights are [out, in])."""
    c = config
    H, D = c.num_attention_heads, c.hidden_size
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, D)}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        out[p + "input_layernorm.weight"] = (D,)
        out[p + "post_attention_layernorm.weight"] = (D,)
        a = p + "self_attn."
        if c.q_lora_rank is None:
            out[a + "q_proj.weight"] = (H * c.qk_head_dim, D)
        else:
            out[a + "q_a_proj.weight"] = (c.q_lora_rank, D)
            out[a + "q_a_layernorm.weight"] = (c.q_lora_rank,)
            out[a + "q_b_proj.weight"] = (H * c.qk_head_dim, c.q_lora_rank)
        out[a + "kv_a_proj_with_mqa.weight"] = (c.kv_lora_rank + c.qk_rope_head_dim, D)
        out[a + "kv_a_layernorm.weight"] = (c.kv_lora_rank,)
        out[a + "kv_b_proj.weight"] = (H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank)
        out[a + "o_proj.weight"] = (D, H * c.v_head_dim)
        m = p + "mlp."
        if c.is_moe_layer(i):
            out[m + "gate.weight"] = (c.n_routed_experts, D)
            out[m + "gate.e_score_correction_bias"] = (c.n_routed_experts,)
            for e in range(c.n_routed_experts):
                _mlp(out, f"{m}experts.{e}.", D, c.moe_intermediate_size)
            if c.n_shared_experts:
                _mlp(out, m + "shared_experts.", D, c.moe_intermediate_size * c.n_shared_experts)
        else:
            _mlp(out, m, D, c.intermediate_size)
    out["model.norm.weight"] = (D,)
    out["lm_head.weight"] = (c.vocab_size, D)
    return out


def _mlp(out: dict[str, tuple[int, ...]], prefix: str, hidden: int, inter: int) -> None:
    out[prefix + "gate_proj.weight"] = (inter, hidden)
    out[prefix + "up_proj.weight"] = (inter, hidden)
    out[prefix + "down_proj.weight"] = (hidden, inter)


@dataclass(frozen=True)
class TensorInfo:
    """One header entry; ``begin``/``end`` are absolute byte offsets in ``file``."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """One .safetensors file: its validated header, and its data memory-mapped on first read."""

    def __init__(self, path: Path, tensors: dict[str, TensorInfo], metadata: dict[str, str]) -> None:
        self.path = path
        self.tensors = tensors
        self.metadata = metadata
        self._map: np.memmap | None = None

    @classmethod
    def open(cls, path: str | Path) -> SafetensorsFile:
        path = Path(path)
        try:
            size = path.stat().st_size
            with path.open("rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: truncated file ({size} bytes, no 8-byte header length)")
                (n,) = struct.unpack("<Q", head)
                if n > MAX_HEADER_BYTES:
                    raise CheckpointError(f"{path}: corrupt header length {n} (limit {MAX_HEADER_BYTES})")
                if 8 + n > size:
                    raise CheckpointError(
                        f"{path}: truncated file: header length {n} runs past the end ({size} bytes)"
                    )
                raw = f.read(n)
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc
        try:
            header = _load_json(raw.decode("utf-8"))
        except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, duplicates, nesting
            raise CheckpointError(f"{path}: corrupt header: not valid JSON ({exc})") from exc
        if not isinstance(header, dict):
            raise CheckpointError(f"{path}: corrupt header: expected a JSON object")
        data_start, data_len = 8 + n, size - 8 - n
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise CheckpointError(f"{path}: corrupt header: __metadata__ is not an object")
        tensors = {
            name: _parse_entry(path, name, entry, data_start, data_len) for name, entry in header.items()
        }
        spans = sorted((t.begin, t.end, t.name) for t in tensors.values() if t.end > t.begin)
        for (_, prev_end, prev), (begin, _, name) in zip(spans, spans[1:], strict=False):
            if begin < prev_end:
                raise CheckpointError(f"{path}: corrupt header: tensor {name!r} overlaps tensor {prev!r}")
        return cls(path, tensors, {str(k): str(v) for k, v in metadata.items()})

    def array(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array of its stored dtype (nothing is copied)."""
        info = self.tensors[name]
        np_dtype = SAFETENSORS_DTYPES[info.dtype][1]
        if np_dtype is None:
            raise CheckpointError(
                f"{self.path}: tensor {name!r} has unsupported dtype {info.dtype} ({_SUPPORTED})"
            )
        if info.numel == 0:
            return np.zeros(info.shape, dtype=np_dtype)
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map[info.begin : info.end].view(np_dtype).reshape(info.shape)

    def close(self) -> None:
        self._map = None


def _parse_entry(path: Path, name: str, entry: object, data_start: int, data_len: int) -> TensorInfo:
    def corrupt(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: corrupt header entry for tensor {name!r}: {why}")

    if not isinstance(entry, dict):
        raise corrupt("not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:  # a list or dict is unhashable
        raise corrupt(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise corrupt(f"shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        raise corrupt(f"data_offsets {offsets!r} is not [begin, end]")
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        raise corrupt(
            f"data_offsets [{begin}, {end}] outside the data section ({data_len} bytes): truncated or corrupt"
        )
    bits = SAFETENSORS_DTYPES[dtype][0]
    # Even an empty tensor's dimensions must describe an array that can exist (NumPy's intp limit).
    if math.prod(s for s in shape if s) * max(bits, 8) // 8 >= 2**62:
        raise corrupt(f"shape {shape} is larger than any array can be")
    nbytes = (math.prod(shape) * bits + 7) // 8
    if end - begin != nbytes:
        raise corrupt(f"data_offsets span {end - begin} bytes but shape {shape} of {dtype} needs {nbytes}")
    return TensorInfo(name, path, dtype, tuple(shape), data_start + begin, data_start + end)


def _resolve(sl: slice | None, n: int, what: str, name: str) -> tuple[int, int]:
    if sl is None:
        return 0, n
    if not isinstance(sl, slice):
        raise TypeError(f"{what} for tensor {name!r} must be a slice or None, got {type(sl).__name__}")
    start, stop, step = sl.indices(n)
    if step != 1:
        raise ValueError(f"{what} slice for tensor {name!r} must have step 1")
    return start, max(start, stop)


class Checkpoint:
    """A model folder's tensors. ``Checkpoint.open(dir)`` reads only the headers; ``get`` maps and copies
    just the requested rows/columns, converting (and dequantizing FP8) to the requested dtype."""

    def __init__(
        self,
        model_dir: Path,
        files: list[SafetensorsFile],
        locations: dict[str, SafetensorsFile],
        num_hidden_layers: int | None,
        fp8_block: tuple[int, int],
        index_path: Path | None,
    ) -> None:
        self.model_dir = model_dir
        self.files = files
        self.index_path = index_path
        self.fp8_block = fp8_block
        self._num_hidden_layers = num_hidden_layers
        self._where = locations

    @classmethod
    def open(cls, model_dir: str | Path, config: ModelConfig | None = None) -> Checkpoint:
        """Open ``model.safetensors``, or the shards of ``model.safetensors.index.json``, or else every
        ``*.safetensors`` of the folder. With ``config``, tensors of layers >= num_hidden_layers (the MTP
        layer) are hidden and the FP8 block size comes from its quantization_config (default 128x128)."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise CheckpointError(f"{model_dir}: not a model folder")
        index_path = model_dir / "model.safetensors.index.json"
        single = model_dir / "model.safetensors"
        files: list[SafetensorsFile] = []
        where: dict[str, SafetensorsFile] = {}
        if index_path.exists():
            weight_map = _read_index(index_path)
            by_file: dict[str, SafetensorsFile] = {}
            for name, fname in weight_map.items():
                if fname not in by_file:
                    shard = model_dir / fname
                    if not shard.is_file():
                        raise CheckpointError(
                            f"{index_path}: tensor {name!r} is mapped to missing file {shard}"
                        )
                    by_file[fname] = SafetensorsFile.open(shard)
                    files.append(by_file[fname])
                f = by_file[fname]
                if name not in f.tensors:
                    raise CheckpointError(
                        f"{index_path}: tensor {name!r} is mapped to {f.path}, which does not hold it"
                    )
                where[name] = f
        else:
            paths = [single] if single.is_file() else sorted(model_dir.glob("*.safetensors"))
            if not paths:
                raise CheckpointError(
                    f"{model_dir}: no model.safetensors, model.safetensors.index.json or *.safetensors"
                )
            for p in paths:
                f = SafetensorsFile.open(p)
                files.append(f)
                for name in f.tensors:
                    if name in where:
                        raise CheckpointError(f"{p}: tensor {name!r} is also in {where[name].path}")
                    where[name] = f
        block = (128, 128)
        if config is not None and config.quantization is not None:
            block = (config.quantization.block_rows, config.quantization.block_cols)
        layers = None if config is None else config.num_hidden_layers
        return cls(model_dir, files, where, layers, block, index_path if index_path.exists() else None)

    # ---- lookup ------------------------------------------------------------------------------

    def _visible(self, name: str) -> bool:
        layer = layer_index(name)
        return layer is None or self._num_hidden_layers is None or layer < self._num_hidden_layers

    def names(self) -> list[str]:
        """Tensor names (MTP layers excluded when opened with a config), sorted."""
        return sorted(n for n in self._where if self._visible(n))

    def __contains__(self, name: str) -> bool:
        return name in self._where and self._visible(name)

    def info(self, name: str) -> TensorInfo:
        if name not in self:
            where = self.index_path or self.model_dir
            raise CheckpointError(f"{where}: missing tensor {name!r}")
        return self._where[name].tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.info(name).shape

    def dtype(self, name: str) -> str:
        """Stored safetensors dtype string (e.g. 'BF16', 'F8_E4M3')."""
        return self.info(name).dtype

    def _scale_name(self, name: str) -> str:
        return name + "_scale_inv"

    # ---- reading -----------------------------------------------------------------------------

    def get(
        self,
        name: str,
        rows: slice | None = None,
        cols: slice | None = None,
        dtype: np.dtype | type = np.float32,
    ) -> np.ndarray:
        """A C-contiguous copy of ``tensor[rows, cols]`` in ``dtype`` (float32, float64, float16 or
        ml_dtypes.bfloat16). ``rows`` slices dimension 0, ``cols`` dimension 1 (step 1). FP8 tensors are
        dequantized blockwise in float32 first, reading only the scale blocks the slice touches."""
        info = self.info(name)
        f = self._where[name]
        if info.dtype not in _FLOAT_DTYPES or SAFETENSORS_DTYPES[info.dtype][1] is None:
            raise CheckpointError(
                f"{info.file}: tensor {name!r} has unsupported dtype {info.dtype} ({_SUPPORTED})"
            )
        if info.dtype == "F8_E4M3":
            self._check_scale(name, info)  # a malformed FP8 tensor is the file's fault, not the slice's
        if cols is not None and len(info.shape) < 2:
            raise ValueError(f"tensor {name!r} has {len(info.shape)} dimension(s); cols needs 2")
        r0, r1 = _resolve(rows, info.shape[0], "rows", name) if info.shape else (0, 0)
        c0, c1 = _resolve(cols, info.shape[1], "cols", name) if len(info.shape) >= 2 else (0, 0)
        arr = f.array(name)
        if len(arr.shape) == 1:
            arr = arr[r0:r1]
        elif len(arr.shape) >= 2:
            arr = arr[r0:r1, c0:c1]
        if info.dtype == "F8_E4M3":
            return np.ascontiguousarray(
                self._dequantize(name, info, arr, r0, r1, c0, c1).astype(dtype, copy=False)
            )
        # np.array copies out of the memory map even when no conversion is needed.
        return np.array(arr, dtype=dtype, order="C", copy=True)

    def _dequantize(
        self, name: str, info: TensorInfo, q: np.ndarray, r0: int, r1: int, c0: int, c1: int
    ) -> np.ndarray:
        scale_name = self._check_scale(name, info)
        br, bc = self.fp8_block
        scale = self._where[scale_name].array(scale_name)
        # Scale of each element of the slice: block index = global row // br, global column // bc.
        s = np.asarray(scale, dtype=np.float32)[np.ix_(np.arange(r0, r1) // br, np.arange(c0, c1) // bc)]
        return q.astype(np.float32) * s

    def load(
        self,
        names: Iterable[str],
        dtype: np.dtype | type = np.float32,
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, np.ndarray]:
        """Whole tensors by name (``progress(name)`` is called after each)."""
        out: dict[str, np.ndarray] = {}
        for name in names:
            out[name] = self.get(name, dtype=dtype)
            if progress is not None:
                progress(name)
        return out

    def load_weights(self, config: ModelConfig, dtype: np.dtype | type = np.float32) -> dict[str, np.ndarray]:
        """Validate against ``config``, then every expected tensor (see ``expected_tensors``), whole."""
        self.validate(config)
        return self.load(expected_tensors(config), dtype=dtype)

    # ---- validation --------------------------------------------------------------------------

    def validate(self, config: ModelConfig) -> None:
        """Check that every tensor ``config`` implies is present, with its shape, in a supported dtype,
        and with a well-formed weight_scale_inv when stored as FP8. Reads headers only."""
        where = self.index_path or self.model_dir
        missing = [n for n in expected_tensors(config) if n not in self]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(
                f"{where}: missing tensor {missing[0]!r}{more}, required by {config.source}"
            )
        for name, shape in expected_tensors(config).items():
            info = self.info(name)
            if info.shape != shape:
                raise CheckpointError(
                    f"{info.file}: tensor {name!r} has shape {list(info.shape)}, "
                    f"but {config.source} implies {list(shape)}"
                )
            if info.dtype not in _FLOAT_DTYPES or SAFETENSORS_DTYPES[info.dtype][1] is None:
                raise CheckpointError(
                    f"{info.file}: tensor {name!r} has unsupported dtype {info.dtype} ({_SUPPORTED})"
                )
            if info.dtype == "F8_E4M3":
                self._check_scale(name, info)

    def _check_scale(self, name: str, info: TensorInfo) -> str:
        """Name of the FP8 tensor's weight_scale_inv after checking its presence, shape and dtype."""
        scale_name = self._scale_name(name)
        if scale_name not in self._where:
            raise CheckpointError(f"{info.file}: FP8 tensor {name!r} has no {scale_name!r}")
        if len(info.shape) != 2:
            raise CheckpointError(
                f"{info.file}: FP8 tensor {name!r} must be 2-D, has shape {list(info.shape)}"
            )
        s_info = self._where[scale_name].tensors[scale_name]
        br, bc = self.fp8_block
        want = (-(-info.shape[0] // br), -(-info.shape[1] // bc))
        if s_info.shape != want:
            raise CheckpointError(
                f"{s_info.file}: tensor {scale_name!r} has shape {list(s_info.shape)}, expected {list(want)} "
                f"for FP8 tensor {name!r} of shape {list(info.shape)} with {br}x{bc} blocks"
            )
        if s_info.dtype not in ("F32", "BF16", "F16"):
            raise CheckpointError(
                f"{s_info.file}: tensor {scale_name!r} has unsupported dtype {s_info.dtype}"
            )
        return scale_name

    def close(self) -> None:
        for f in self.files:
            f.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_index(path: Path) -> dict[str, str]:
    try:
        data = _load_json(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from exc
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, duplicates, nesting
        raise CheckpointError(f"{path}: corrupt index: not valid JSON ({exc})") from exc
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{path}: corrupt index: no weight_map of tensor name -> file name")
    for name, fname in weight_map.items():
        if Path(fname).name != fname or fname in ("", ".", ".."):
            raise CheckpointError(
                f"{path}: tensor {name!r} is mapped to {fname!r}, which is not a file in the folder"
            )
    return weight_map

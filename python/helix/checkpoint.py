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
Multi-token-prediction (MTP) layers (``model.layers.L`` with L >= num_hidden_layers) are not part of the
model's tensors: ``validate`` / ``load_weights`` skip them, and ``validate_mtp`` / ``load_mtp_weights`` (or
``require_mtp``, for speculative decoding) check and read the one the config declares.
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
from helix.model_tensors import expected_mtp_tensors, expected_tensors, is_fp8_quantizable

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "SafetensorsFile",
    "TensorInfo",
    "expected_mtp_tensors",
    "expected_tensors",
    "is_fp8_quantizable",
    "layer_index",
    "require_mtp",
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
        visible_layers: int | None,
        fp8_block: tuple[int, int],
        index_path: Path | None,
    ) -> None:
        self.model_dir = model_dir
        self.files = files
        self.index_path = index_path
        self.fp8_block = fp8_block
        self._visible_layers = visible_layers
        self._where = locations

    @classmethod
    def open(cls, model_dir: str | Path, config: ModelConfig | None = None) -> Checkpoint:
        """Open ``model.safetensors``, or the shards of ``model.safetensors.index.json``, or else every
        ``*.safetensors`` of the folder. With ``config``, tensors of layers the config does not declare
        (index >= num_hidden_layers + num_nextn_predict_layers) are hidden and the FP8 block size comes from
        its quantization_config (default 128x128)."""
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
        layers = None if config is None else config.num_hidden_layers + config.num_nextn_predict_layers
        return cls(model_dir, files, where, layers, block, index_path if index_path.exists() else None)

    # ---- lookup ------------------------------------------------------------------------------

    def _visible(self, name: str) -> bool:
        layer = layer_index(name)
        return layer is None or self._visible_layers is None or layer < self._visible_layers

    def names(self) -> list[str]:
        """Tensor names (with a config: of the layers it declares), sorted."""
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

    def load_mtp_weights(
        self, config: ModelConfig, dtype: np.dtype | type = np.float32
    ) -> dict[str, np.ndarray]:
        """Validate the MTP layer (``validate_mtp``), then its tensors (``expected_mtp_tensors``), whole."""
        self.validate_mtp(config)
        return self.load(expected_mtp_tensors(config), dtype=dtype)

    # ---- validation --------------------------------------------------------------------------

    def validate(self, config: ModelConfig) -> None:
        """Check that every tensor ``config`` implies is present, with its shape, in a supported dtype,
        and with a well-formed weight_scale_inv when stored as FP8. Reads headers only."""
        where = self.index_path or self.model_dir
        expected = expected_tensors(config)
        missing = [n for n in expected if n not in self]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise CheckpointError(
                f"{where}: missing tensor {missing[0]!r}{more}, required by {config.source}"
            )
        self._check_tensors(expected, config)

    def validate_mtp(self, config: ModelConfig) -> None:
        """Check the multi-token-prediction layer speculative decoding needs, as ``validate`` checks the
        model: declared by the config (num_nextn_predict_layers >= 1), every tensor of
        ``expected_mtp_tensors`` present (all missing ones are named), shapes, dtypes, FP8 scales."""
        where = self.index_path or self.model_dir
        if config.num_nextn_predict_layers == 0:
            raise CheckpointError(
                f"speculative decoding needs a multi-token-prediction (MTP) layer, but {config.source} has "
                "num_nextn_predict_layers = 0 (absent or 0): this checkpoint ships no MTP weights "
                "(DeepSeek-V3/R1 checkpoints set it to 1 and hold model.layers.<num_hidden_layers>.*)"
            )
        expected = expected_mtp_tensors(config)
        missing = [n for n in expected if n not in self]
        if missing:
            shown = ", ".join(repr(n) for n in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            raise CheckpointError(
                f"{where}: the multi-token-prediction layer {config.mtp_layer_index} that "
                f"num_nextn_predict_layers = {config.num_nextn_predict_layers} in {config.source} declares "
                f"is incomplete: missing {len(missing)} of its {len(expected)} tensors: {shown}{more}"
            )
        self._check_tensors(expected, config)

    def _check_tensors(self, expected: dict[str, tuple[int, ...]], config: ModelConfig) -> None:
        """Shape, dtype and FP8 scale of every (present) tensor of ``expected``."""
        for name, shape in expected.items():
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


def require_mtp(model_dir: str | Path, config: ModelConfig | None = None) -> ModelConfig:
    """The config of a model folder whose checkpoint has a complete multi-token-prediction layer: what
    ``--speculative-tokens`` (the CLI, helix.LLM) checks before anything else is built. Raises
    CheckpointError naming the config key or the missing tensors (ModelConfigError for a bad config.json)."""
    config = config if config is not None else ModelConfig.from_pretrained(model_dir)
    with Checkpoint.open(model_dir, config) as ckpt:
        ckpt.validate_mtp(config)
    return config


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

"""The offline KV hand-off: one request's KV (every layer's latent + rope rows, positions [0, n), in the
storage dtype) in a file, with a header that says what it is, so that another LLM of another layout can
import it and decode on (helix.LLM.export_kv / import_kv).

Layout of the file: b"HELIXKV1", the header's length (uint64 little-endian), the header (JSON, UTF-8), zero
padding to a multiple of 64 bytes, then rows [num_layers, num_positions, row_width] in `dtype`, ascending
positions. A file whose model fingerprint, dtype or shape does not match the importing LLM, or whose size is
not what its header says, is refused with a KVFileError naming the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from helix.disagg.layout import KVLayout
from helix.generate import TokenLogprobs

__all__ = ["KVFileError", "KVFileHeader", "model_fingerprint", "read_header", "read_rows", "write_kv_file"]

MAGIC = b"HELIXKV1"
_ALIGN = 64
_SAMPLE = 1 << 16  # bytes hashed at each end of every weight file


class KVFileError(ValueError):
    """A KV file that does not fit the importing LLM, or is damaged."""


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """sha256 of config.json and, for every *.safetensors file, its name, size and first and last 64 KiB:
    the same model folder (or a copy) gives the same value; another model or other weights do not."""
    root = Path(model_dir)
    h = hashlib.sha256((root / "config.json").read_bytes())
    for f in sorted(root.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(_SAMPLE))
            fh.seek(max(0, size - _SAMPLE))
            h.update(fh.read(_SAMPLE))
    return h.hexdigest()


@dataclass(frozen=True)
class KVFileHeader:
    fingerprint: str
    dtype: str  # "float32" or "bfloat16"
    num_layers: int
    row_width: int  # kv_lora_rank + qk_rope_head_dim
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated so far; the last one's KV is not in the file (not yet fed)
    layout: KVLayout  # of the exporting LLM (information: the rows are in global position order)
    data_offset: int = 0
    token_logprobs: list[TokenLogprobs] | None = None  # of token_ids, when the request asked for logprobs

    @property
    def num_positions(self) -> int:
        return len(self.prompt_token_ids) + len(self.token_ids) - 1

    @property
    def itemsize(self) -> int:
        return 4 if self.dtype == "float32" else 2

    @property
    def data_bytes(self) -> int:
        return self.num_layers * self.num_positions * self.row_width * self.itemsize


def write_kv_file(path: str | os.PathLike, header: KVFileHeader, rows: np.ndarray) -> None:
    """rows [num_layers, num_positions, row_width] in the header's dtype (or its bytes, [.., .., row bytes]
    uint8), written after the header."""
    expected = (header.num_layers, header.num_positions)
    if rows.shape[:2] != expected or rows.nbytes != header.data_bytes:
        raise ValueError(
            f"rows {rows.shape} {rows.dtype} do not match the header: {expected} x {header.dtype}"
        )
    special = ("layout", "data_offset", "token_logprobs")
    fields = {k: v for k, v in header.__dict__.items() if k not in special}
    if header.token_logprobs is not None:
        fields["token_logprobs"] = [lp.to_json() for lp in header.token_logprobs]
    text = json.dumps({"format": 1, **fields, "layout": header.layout.as_dict()}).encode()
    start = len(MAGIC) + 8 + len(text)
    pad = -start % _ALIGN
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(text)) + text + b"\0" * pad)
        f.write(np.ascontiguousarray(rows).tobytes())


def _logprobs(x: list | None) -> list[TokenLogprobs] | None:
    return None if x is None else [TokenLogprobs.from_json(e) for e in x]


def read_header(path: str | os.PathLike) -> KVFileHeader:
    """The header of a KV file; KVFileError if it is not one or its size does not match the header."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
            raise KVFileError(f"{path}: not a Helix KV file (no {MAGIC!r} header)")
        (n,) = struct.unpack("<Q", head[len(MAGIC) :])
        if len(head) + n > size:
            raise KVFileError(f"{path}: truncated file: the header says {n} bytes of JSON, the file ends")
        try:
            d = json.loads(f.read(n))
        except ValueError as exc:
            raise KVFileError(f"{path}: damaged header: {exc}") from None
    if d.get("format") != 1:
        raise KVFileError(f"{path}: format {d.get('format')!r} is not supported (1 is)")
    start = len(MAGIC) + 8 + n
    h = KVFileHeader(
        d["fingerprint"],
        d["dtype"],
        int(d["num_layers"]),
        int(d["row_width"]),
        [int(t) for t in d["prompt_token_ids"]],
        [int(t) for t in d["token_ids"]],
        KVLayout(**d["layout"]),
        start + (-start % _ALIGN),
        _logprobs(d.get("token_logprobs")),
    )
    if size != h.data_offset + h.data_bytes:
        raise KVFileError(
            f"{path}: truncated or damaged file: {size} bytes, but its header describes "
            f"{h.data_offset + h.data_bytes} ({h.num_layers} layers x {h.num_positions} positions x "
            f"{h.row_width} {h.dtype})"
        )
    return h


def read_rows(path: str | os.PathLike, header: KVFileHeader, positions: list[range]) -> np.ndarray:
    """The rows [num_layers, n, row_width] (raw bytes as uint8 [.., .., row bytes]) of the given positions."""
    rb = header.row_width * header.itemsize
    data = np.memmap(path, np.uint8, "r", header.data_offset, (header.num_layers, header.num_positions, rb))
    parts = [data[:, r.start : r.stop] for r in positions]
    return np.ascontiguousarray(np.concatenate(parts, 1) if parts else data[:, :0])

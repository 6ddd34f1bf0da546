"""helix.LLM.export_kv / import_kv: the KV hand-off through a file (helix.disagg.kv_file), between LLMs of
any two layouts of the same model."""

from __future__ import annotations

import functools
import os

import ml_dtypes
import numpy as np

from helix.disagg.kv_file import (
    KVFileError,
    KVFileHeader,
    model_fingerprint,
    read_header,
    read_rows,
    write_kv_file,
)
from helix.disagg.layout import KVLayout, owned_count, owned_positions

__all__ = ["export_kv", "import_kv", "kv_dtype", "layout_of"]


def layout_of(engine) -> KVLayout:
    return KVLayout(engine.tp, engine.cp, engine.tokens_per_block)


def kv_dtype(name: str):
    return np.float32 if name == "float32" else ml_dtypes.bfloat16


@functools.lru_cache(maxsize=8)
def _fingerprint(model_dir: str) -> str:
    return model_fingerprint(model_dir)


def export_kv(llm, request_id: int, path: str | os.PathLike) -> None:
    eng = llm.engine
    seq, out = llm.scheduler.kv_sequence(request_id)
    n = len(out.prompt_token_ids) + len(out.token_ids) - 1
    layout = layout_of(eng)
    _, rows = eng.read_kv(seq)  # [L, n_r, D]: this rank's positions, ascending
    raw = rows.view(np.uint8)  # [L, n_r, row bytes]
    padded = np.zeros((raw.shape[0], owned_count(layout, n, 0), raw.shape[2]), np.uint8)  # CP rank 0 has most
    padded[:, : raw.shape[1]] = raw
    gathered = eng.comm.all_gather(padded) if eng.comm.size > 1 else padded[None]  # [world, L, n_0, rb]
    if eng.rank != 0:
        return
    full = np.empty((raw.shape[0], n, raw.shape[2]), np.uint8)
    for cp_rank in range(layout.cp):  # ranks 0..cp-1: TP rank 0 of every CP rank
        row = 0
        for r in owned_positions(layout, n, cp_rank):
            full[:, r.start : r.stop] = gathered[cp_rank][:, row : row + len(r)]
            row += len(r)
    header = KVFileHeader(
        _fingerprint(str(llm.model_dir)),
        eng.dtype,
        raw.shape[0],
        rows.shape[2],
        list(out.prompt_token_ids),
        list(out.token_ids),
        layout,
        token_logprobs=None if out.logprobs is None else list(out.logprobs),
    )
    write_kv_file(path, header, full)


def check_header(llm, header: KVFileHeader, source: str) -> None:
    """KVFileError naming what of the exported KV does not fit this LLM."""
    eng, cfg = llm.engine, llm.engine.config
    if header.fingerprint != _fingerprint(str(llm.model_dir)):
        raise KVFileError(
            f"{source}: another model computed this KV (fingerprint differs from {llm.model_dir})"
        )
    if header.dtype != eng.dtype:
        raise KVFileError(f"{source}: the KV is stored as {header.dtype}, this LLM {eng.dtype}")
    width = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    if (header.num_layers, header.row_width) != (cfg.num_hidden_layers, width):
        raise KVFileError(
            f"{source}: {header.num_layers} layers of {header.row_width} values per row, this model has "
            f"{cfg.num_hidden_layers} of {width}"
        )


def import_kv(llm, path: str | os.PathLike, params) -> int:
    header = read_header(path)
    check_header(llm, header, str(path))
    eng = llm.engine
    mine = owned_positions(layout_of(eng), header.num_positions, eng.rank % eng.cp)
    rows = read_rows(path, header, mine).view(kv_dtype(header.dtype))  # [L, n, D]
    seed = params.seed if params.seed is not None else llm._shared_seed()
    rid = llm.begin_import(header.prompt_token_ids, header.token_ids, params, seed, header.token_logprobs)
    try:
        llm.finish_import(rid, rows)
    except BaseException:
        llm.abort_request(rid)
        raise
    return rid

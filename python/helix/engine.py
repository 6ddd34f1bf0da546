"""HelixEngine: builds the compiled engine of this rank from a checkpoint folder (config, shards, weights)."""

from __future__ import annotations

import itertools

import ml_dtypes
import numpy as np

from helix.checkpoint import Checkpoint, require_mtp
from helix.config import ModelConfig
from helix.device import CUDA_COMMS, check_device_name, cuda_device_for_rank
from helix.rope import yarn_inv_freq
from helix.sharding import shard_mtp_weights, shard_weights

__all__ = ["HelixEngine", "default_kv_blocks", "default_wuv_before_exchange"]


def default_kv_blocks(max_tokens: int, tokens_per_block: int, cp: int) -> int:
    """Blocks per rank so that one sequence of max_tokens fits (the block rule spreads it over cp ranks)."""
    blocks = -(-max_tokens // tokens_per_block)
    return -(-blocks // cp)


def default_wuv_before_exchange(cp: int, device: str) -> bool:
    """W_UV before the exchange by default on the CPU at cp = 1: there is no exchange, the outputs are the
    same bits (the merge of one state multiplies by exactly 1), and only with it may prompt chunks take the
    expanded form of attention (docs/performance.md 9.4). With cp > 1 the latent exchange stays the default
    (the reference implementation's; the planner models it), and on CUDA a bf16 W_UV before the exchange
    reads the partial outputs rounded to bf16 (cuBLAS takes one input dtype): not the same answer there."""
    return cp == 1 and device == "cpu"


class HelixEngine:
    """One rank's engine: the model's sharded weights, the paged KV cache (one block table, one pool per
    layer), communicators. A step is all or nothing: a bad one raises the same error on every rank and leaves
    the cache as it was.

    device="cpu" runs the compiled engine on the CPU; device="cuda" on this rank's GPU (one engine, two
    backends: helix._core.Engine(..., device=...)). With
    cuda_comm="nccl" each rank has its own GPU (its local rank) and the ranks talk over NCCL; with
    cuda_comm="host" the collectives run over `comm` (MPI) through host memory and ranks may share GPUs
    (local rank modulo the GPU count), e.g. several CP ranks on one GPU. Without CUDA in the build or
    without a GPU, device="cuda" raises helix.device.DeviceUnavailableError before any weight is read.

    mtp=True also loads the checkpoint's multi-token-prediction layer (helix.CheckpointError when it has
    none, before anything is built) with its own KV pool and block table, for ``mtp_step``
    (docs/speculative.md).

    wuv_before_exchange: apply W_UV before the all-to-all (Dv instead of kv_lora_rank values per head, exact
    either way); None (default) resolves with default_wuv_before_exchange.
    """

    def __init__(
        self,
        model_dir: str,
        *,
        comm=None,
        tp: int = 1,
        cp: int = 1,
        tokens_per_block: int = 32,
        max_tokens: int = 16384,
        dtype: str = "float32",
        wuv_before_exchange: bool | None = None,
        expert_tensor_parallel: bool = False,
        progress: bool = True,
        device: str = "cpu",
        cuda_comm: str = "nccl",
        mtp: bool = False,
    ) -> None:
        from helix import _core
        from helix.comm import world

        if dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
        self.device = check_device_name(device)
        self.dtype = dtype  # of the stored weights and KV cache
        if cuda_comm not in CUDA_COMMS:
            raise ValueError(f"cuda_comm must be one of {CUDA_COMMS}, got {cuda_comm!r}")
        self.cuda_comm = cuda_comm
        self.cuda_device = cuda_device_for_rank(share=cuda_comm == "host") if device == "cuda" else None
        self.comm = comm if comm is not None else world()
        if self.comm.size != tp * cp:
            raise ValueError(
                f"tp * cp = {tp} * {cp} = {tp * cp} ranks, but the job has {self.comm.size} "
                f"(launch with mpiexec -n {tp * cp})"
            )
        self.config = cfg = ModelConfig.from_pretrained(model_dir)
        if mtp:
            require_mtp(model_dir, cfg)
        self.mtp = mtp
        n = tp * cp
        if cfg.num_attention_heads % n:
            raise ValueError(
                f"num_attention_heads ({cfg.num_attention_heads}) is not divisible by tp * cp = {n}"
            )
        self.tp, self.cp, self.rank = tp, cp, self.comm.rank
        self.tokens_per_block = tokens_per_block
        self.eos_token_ids = tuple(cfg.eos_token_ids)
        inv_freq, attention_factor = yarn_inv_freq(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_scaling)

        ec = _core.EngineConfig()
        for name in (
            "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "kv_lora_rank",
            "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok",
            "n_shared_experts", "n_group", "topk_group", "first_k_dense_replace", "moe_layer_freq",
            "norm_topk_prob", "routed_scaling_factor", "rms_norm_eps",
        ):  # fmt: skip
            setattr(ec, name, getattr(cfg, name) or 0)
        ec.num_layers = cfg.num_hidden_layers
        ec.num_heads = cfg.num_attention_heads
        ec.q_lora_rank = cfg.q_lora_rank or 0
        ec.softmax_scale = cfg.softmax_scale
        ec.rope_inv_freq = [float(v) for v in inv_freq]
        ec.rope_attention_factor = float(attention_factor)
        ec.tp, ec.cp, ec.rank = tp, cp, self.rank
        ec.tokens_per_block = tokens_per_block
        ec.num_kv_blocks = default_kv_blocks(max_tokens, tokens_per_block, cp)
        ec.kv_dtype = dtype
        if wuv_before_exchange is None:
            wuv_before_exchange = default_wuv_before_exchange(cp, self.device)
        self.wuv_before_exchange = bool(wuv_before_exchange)
        ec.wuv_before_exchange = self.wuv_before_exchange
        ec.expert_tensor_parallel = expert_tensor_parallel
        ec.num_mtp_layers = 1 if mtp else 0
        self._engine = _core.Engine(
            ec, self.comm, device=device, cuda_device=self.cuda_device or 0, cuda_comm=cuda_comm
        )

        ckpt = Checkpoint.open(model_dir, config=cfg)
        ckpt.validate(cfg)
        store = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
        names = self._engine.expected_weights()
        read = lambda nm, rows, cols: ckpt.get(nm, rows=rows, cols=cols)  # noqa: E731
        items = shard_weights(cfg, read, tp, cp, self.rank, expert_tensor_parallel)
        if mtp:
            items = itertools.chain(
                items, shard_mtp_weights(cfg, read, tp, cp, self.rank, expert_tensor_parallel)
            )
        if progress and self.rank == 0:
            from tqdm import tqdm

            items = tqdm(items, total=len(names), desc="loading weights", unit="tensor", leave=False)
        for name, w in items:
            # Linear weights are stored in `dtype`; norms, the router (gate) and its bias stay float32.
            if w.ndim >= 2 and not name.endswith(".gate"):
                w = w.astype(store)
            self._engine.set_weight(name, np.ascontiguousarray(w))
        self._engine.check_weights()

    @property
    def num_kv_blocks(self) -> int:
        return self._engine.num_kv_blocks

    @property
    def device_bytes(self) -> int | None:
        """GPU memory this rank's engine holds (weights, KV cache, workspaces); None on the CPU."""
        return self._engine.memory_bytes if self.device == "cuda" else None

    @property
    def num_free_blocks(self) -> int:
        return self._engine.num_free_blocks

    @property
    def block_table(self):
        """This rank's KV bookkeeping (helix.BlockTable): admission queries, every CP rank's free blocks."""
        return self._engine.block_table

    @property
    def timings(self) -> dict:
        return self._engine.timings

    def add_sequence(self, seq_id: int, reserve_tokens: int = 0) -> None:
        """Registers an empty sequence, reserving the KV blocks of positions [0, reserve_tokens) on every CP
        rank (helix.KVCacheFullError when they are not free)."""
        self._engine.add_sequence(seq_id, reserve_tokens)

    def free_sequence(self, seq_id: int) -> None:
        self._engine.free_sequence(seq_id)

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Keeps positions [0, num_tokens) of a sequence in every layer's cache (the rejected drafts of a
        verify step released). Every rank calls it identically."""
        self._engine.truncate(seq_id, num_tokens)

    def fill_random(self, seq_id: int, num_tokens: int, seed: int, mtp_rows: int = 0) -> None:
        """Benchmark aid, instead of a prefill (a 16K prompt takes minutes on a CPU): positions
        [0, num_tokens) of the empty sequence seq_id with random rows, uniform in [-1, 1) like RMS-normed
        latents, in every layer's cache, and rows [0, mtp_rows) in the MTP layer's (mtp=True). A step's cost
        does not depend on the cached values. Every rank calls it identically."""
        self._engine.fill_sequence_random(seq_id, num_tokens, seed=seed, scale=1.0)
        if mtp_rows:
            self._engine.fill_mtp_sequence_random(seq_id, mtp_rows, seed=seed + 1, scale=1.0)

    # ---- KV hand-off (helix.disagg): rows of [kv_lora_rank + qk_rope_head_dim] in the KV dtype

    @property
    def kv_row_bytes(self) -> int:
        cfg = self.config
        return (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * (4 if self.dtype == "float32" else 2)

    def read_kv(self, seq_id: int) -> tuple[np.ndarray, np.ndarray]:
        """This rank's rows of a sequence: (positions [n] ascending, rows [num_layers, n, D])."""
        from helix import _core

        return _core.kv_read_rows(self._engine, seq_id)

    def import_kv(self, seq_id: int, num_positions: int, rows: np.ndarray) -> None:
        """Positions [0, num_positions) into the empty sequence seq_id, one step: rows [num_layers, n, D]
        are this rank's positions of that range (ascending). Collective in seq_id and num_positions."""
        from helix import _core

        _core.kv_import_rows(self._engine, seq_id, num_positions, rows)

    def kv_pool_addresses(self) -> list[int]:
        """Host address of every layer's pool [num_kv_blocks * tokens_per_block, D] (device='cpu' only)."""
        from helix import _core

        if self.cuda_device is not None:
            raise NotImplementedError("registering the KV pools with NIXL needs host pools (device='cpu')")
        return _core.kv_pool_addresses(self._engine)

    def truncate_mtp(self, seq_id: int, num_tokens: int) -> None:
        """Keeps positions [0, num_tokens) of a sequence in the MTP layer's cache (after drafting)."""
        self._engine.truncate_mtp(seq_id, num_tokens)

    @property
    def mtp_block_table(self):
        """The MTP layer's KV bookkeeping (its own BlockTable, same blocks and ownership rule)."""
        return self._engine.mtp_block_table

    def mtp_step(self, hidden, next_tokens, positions, seq_ids, q_seq_index, logit_rows):
        """One pass of the MTP layer (mtp=True): row t from hidden [T, hidden_size] float32 (the model's final
        hidden states, or g of the previous draft) and next_tokens [T] at positions [T] of its own cache ->
        (g [L, hidden_size], the block's output before shared_head.norm; logits [L, vocab], the drafts')."""
        return self._engine.mtp_step(hidden, next_tokens, positions, seq_ids, q_seq_index, logit_rows)

    def step(self, tokens, positions, seq_ids, q_seq_index, logit_rows, hidden_rows=None):
        """tokens [T], positions [T], seq_ids [B], q_seq_index [T], logit_rows [L] -> logits [L, vocab];
        with hidden_rows [H] in [0, T), (logits, hidden [H, hidden_size]): those rows' final hidden states
        after the model's norm (what the MTP layer reads), the same on every rank."""
        return self._engine.step(tokens, positions, seq_ids, q_seq_index, logit_rows, hidden_rows)

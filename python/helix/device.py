"""Device selection: "cpu" or "cuda" (one GPU per local rank), with a clear error when CUDA is absent."""

from __future__ import annotations

import os

__all__ = [
    "CUDA_COMMS",
    "DEVICES",
    "DeviceUnavailableError",
    "check_device_name",
    "cuda_device_for_rank",
    "local_rank",
]

DEVICES = ("cpu", "cuda")
# How ranks' GPUs exchange data: NCCL (one GPU per rank), or the host communicator (MPI) through host
# memory, which lets ranks share a GPU.
CUDA_COMMS = ("nccl", "host")

# Launchers' names for the rank's index among the ranks of its node (MPICH hydra, PMI, Open MPI, Slurm).
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "PMI_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")


class DeviceUnavailableError(RuntimeError):
    """The requested device cannot be used here (no CUDA in the build, no GPU, too few GPUs)."""


def check_device_name(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    return device


def local_rank() -> int:
    """This process's rank among the ranks of its node.

    The launcher's variable when set, else the rank in MPI's shared-memory split of COMM_WORLD, else 0.
    """
    for var in _LOCAL_RANK_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError):
        return 0
    world = MPI.COMM_WORLD
    if world.Get_size() <= 1:
        return 0
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


def cuda_device_for_rank(rank_on_node: int | None = None, *, share: bool = False) -> int:
    """The CUDA device of this rank: its local rank (one GPU per rank), or with share=True its local rank
    modulo the number of GPUs (ranks share GPUs round-robin; NCCL cannot be used then).

    Raises DeviceUnavailableError saying why when the build has no CUDA, no GPU is visible, or too few are.
    """
    from helix import _core

    if not _core.cuda.built_with_cuda():
        raise DeviceUnavailableError(
            "device 'cuda' was requested, but helix was built without CUDA "
            "(rebuild with nvcc available: HELIX_CMAKE_ARGS=-DHELIX_ENABLE_CUDA=ON bash scripts/setup.sh)"
        )
    count = _core.cuda.device_count()
    if count == 0:
        raise DeviceUnavailableError(
            "device 'cuda' was requested, but no CUDA GPU is visible on this machine "
            "(helix was built with CUDA; check nvidia-smi and CUDA_VISIBLE_DEVICES)"
        )
    index = local_rank() if rank_on_node is None else rank_on_node
    if share:
        return index % count
    if not 0 <= index < count:
        raise DeviceUnavailableError(
            f"device 'cuda': this rank is local rank {index} and needs GPU {index} (one GPU per rank, NCCL), "
            f"but only {count} GPU(s) are visible (cuda_comm 'host' / --cuda-comm host lets ranks share GPUs)"
        )
    return index

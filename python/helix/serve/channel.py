"""The control channel of the serving loop: rank 0 broadcasts, before every engine step, what arrived and
what was cancelled (a Commands), so that every rank makes the same add_request / abort_request / step
calls (helix.LLM's collective contract).

It runs on its own duplicate of MPI_COMM_WORLD (mpi4py), apart from the engine's communicator. A rank
waiting for rank 0 must not burn a core while the server is idle: MPICH busy-polls inside a blocking
broadcast, so the others post a non-blocking broadcast of a one-word header and poll it with sleeps that
grow from 50 us to 5 ms (an idle rank wakes ~200 times a second; a busy loop's next header is usually
there at the first test). A non-empty header is followed by the Commands themselves (a pickled broadcast,
all ranks then being ready). With one process there is nothing to send.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from helix.generate import SamplingParams

__all__ = ["Commands", "ControlChannel", "NewRequest"]

_MIN_SLEEP_S = 50e-6
_MAX_SLEEP_S = 5e-3


@dataclass(frozen=True)
class NewRequest:
    key: int  # the HTTP side's id of the request
    prompt: list[int]
    params: SamplingParams  # with a seed: rank 0 draws one for unseeded requests, so every rank agrees
    handoff: object | None = None  # disaggregated roles: the KV to export or import


@dataclass
class Commands:
    """One loop iteration's news from rank 0."""

    adds: list[NewRequest] = field(default_factory=list)
    aborts: list[int] = field(default_factory=list)  # keys
    shutdown: bool = False  # leave the loop after these (every rank at the same iteration)
    handoff: list = field(default_factory=list)  # disaggregated roles' decisions (KV ready, failed, freed)

    def __bool__(self) -> bool:
        return bool(self.adds or self.aborts or self.shutdown or self.handoff)


class ControlChannel:
    """Broadcasts rank 0's Commands to every rank, and gathers one integer per rank back (collective)."""

    def __init__(self) -> None:
        from helix.comm import _mpi

        MPI = _mpi()
        world = MPI.COMM_WORLD if MPI is not None else None
        self._comm = world.Dup() if world is not None and world.Get_size() > 1 else None
        self.rank = self._comm.Get_rank() if self._comm is not None else 0
        self.size = self._comm.Get_size() if self._comm is not None else 1
        self._header = np.zeros(1, np.int64)  # 1: Commands follow; 0: step with no news

    def broadcast(self, commands: Commands | None) -> Commands:
        """Rank 0 passes its Commands, the others None; every rank returns rank 0's."""
        if self._comm is None:
            return commands if commands is not None else Commands()
        self._header[0] = 1 if self.rank == 0 and commands else 0
        request = self._comm.Ibcast(self._header, root=0)
        if self.rank == 0:
            request.Wait()
        else:
            sleep = 0.0
            while not request.Test():
                time.sleep(sleep)
                sleep = min(max(2 * sleep, _MIN_SLEEP_S), _MAX_SLEEP_S)
        if not self._header[0]:
            return Commands()
        return self._comm.bcast(commands if self.rank == 0 else None, root=0)

    def gather(self, value: int) -> list[int]:
        """Every rank's value, in rank order, on rank 0 ([] on the others)."""
        if self._comm is None:
            return [value]
        out = self._comm.gather(int(value), root=0)
        return out if out is not None else []

    def gather_objects(self, value) -> list:
        """Every rank's (picklable) value, in rank order, on rank 0 ([] on the others)."""
        if self._comm is None:
            return [value]
        out = self._comm.gather(value, root=0)
        return out if out is not None else []

    def close(self) -> None:
        if self._comm is not None:
            self._comm.Free()
            self._comm = None

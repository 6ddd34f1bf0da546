"""One rank's NIXL agent (UCX backend, host memory) for the KV hand-off: what a context rank registers (its KV
pools, read in place) and what a generation rank pulls with (READs of remote rows into a receive buffer).

NIXL is an optional dependency (requirements/disagg.txt: nixl-cu13, which works without a GPU); the rest of
helix imports without it, and a disaggregated role that needs it says how to install it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["KVAgent", "Pull", "TransferUnavailableError", "require_nixl"]

NIXL_PACKAGE = "nixl-cu13==1.5.1"


class TransferUnavailableError(RuntimeError):
    """NIXL is not installed."""


def require_nixl():
    """The nixl_cu13 module; TransferUnavailableError saying how to install it when it is missing."""
    os.environ.setdefault("NIXL_LOG_LEVEL", "WARN")  # its INFO lines would flood every rank's log
    try:
        import nixl_cu13
    except ImportError as exc:
        raise TransferUnavailableError(
            f"the KV hand-off needs NIXL: pip install {NIXL_PACKAGE} (requirements/disagg.txt): {exc}"
        ) from None
    logging.getLogger("nixl").setLevel(logging.WARNING)
    return nixl_cu13


@dataclass
class Pull:
    """READs posted to one or more remote agents; poll() until it says "DONE" or returns an error."""

    agent: KVAgent
    handles: list = field(default_factory=list)
    registration: object | None = None
    nbytes: int = 0  # bytes the READs move into the receive buffer
    error: str | None = None

    def poll(self) -> str:
        """ "DONE", "PROC", or the error (a str starting with "ERR")."""
        if self.error is not None:
            return self.error
        try:
            states = [self.agent.nixl.check_xfer_state(h) for h in self.handles]
        except Exception as exc:  # nixlRemoteDisconnectError and the like: the peer has gone
            self.error = f"ERR {type(exc).__name__}: {exc}"
            return self.error
        if "ERR" in states:
            self.error = "ERR the transfer failed (NIXL reported an error state)"
            return self.error
        return "PROC" if "PROC" in states else "DONE"

    def release(self) -> None:
        """Frees the transfer handles and unregisters the receive buffer (after DONE or an error)."""
        for h in self.handles:
            try:
                self.agent.nixl.release_xfer_handle(h)
            except Exception:  # a handle of a failed transfer may refuse; nothing is left to free then
                pass
        self.handles = []
        if self.registration is not None:
            self.agent.nixl.deregister_memory(self.registration)
            self.registration = None


class KVAgent:
    """A NIXL agent named `name` with the UCX backend. Remote agents are added from their metadata once."""

    def __init__(self, name: str) -> None:
        nixl = require_nixl()
        self.name = name
        # No progress thread: NIXL's spins with no pause (60% of a core per idle agent here, measured), which
        # on a small machine takes the cores from the engines. A puller progresses its READs when it polls
        # them; the side read from needs none for the intra-node transports (shared memory, CMA), and
        # progress() is there for the others (see ContextLoop).
        config = nixl.nixl_agent_config(enable_prog_thread=False, backends=["UCX"])
        self.nixl = nixl.nixl_agent(name, config)
        self._remotes: set[str] = set()

    def register(self, regions: list[tuple[int, int]]):
        """Registers host memory regions [(address, nbytes)] for transfers; returns the registration."""
        return self.nixl.register_memory([(a, n, 0, "") for a, n in regions], "DRAM")

    def progress(self) -> None:
        """Lets UCX serve the READs of peers on transports that need the target's help (e.g. TCP)."""
        self.nixl.get_new_notifs()

    def metadata(self) -> bytes:
        """What a peer needs to reach this agent and its registered memory (after register)."""
        return self.nixl.get_agent_metadata()

    def pull(self, dst: np.ndarray, reads: dict[tuple[str, bytes], np.ndarray]) -> Pull:
        """Posts READs into dst (a C-contiguous host array): reads[(remote name, remote metadata)] is an
        [n, 3] int64 array of (remote address, local byte offset in dst, nbytes). Raises on a bad request;
        a remote that has gone shows up in Pull.poll()."""
        pull = Pull(self, registration=self.register([(dst.ctypes.data, dst.nbytes)]))
        try:
            for (remote, meta), rows in reads.items():
                if remote not in self._remotes:
                    self.nixl.add_remote_agent(meta)
                    self._remotes.add(remote)
                if not len(rows):
                    continue
                base = dst.ctypes.data
                local = np.stack([base + rows[:, 1], rows[:, 2], np.zeros(len(rows), np.int64)], 1)
                remote_descs = np.stack([rows[:, 0], rows[:, 2], np.zeros(len(rows), np.int64)], 1)
                handle = self.nixl.initialize_xfer(
                    "READ",
                    self.nixl.get_xfer_descs(local.astype(np.uint64), "DRAM"),
                    self.nixl.get_xfer_descs(remote_descs.astype(np.uint64), "DRAM"),
                    remote,
                )
                pull.handles.append(handle)
                pull.nbytes += int(rows[:, 2].sum())
                if self.nixl.transfer(handle) == "ERR":
                    pull.error = f"ERR posting the READs from {remote} failed"
        except Exception as exc:
            pull.error = f"ERR {type(exc).__name__}: {exc}"
        return pull

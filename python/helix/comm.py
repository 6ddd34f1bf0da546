"""Communicators for Python callers: the MPI world (through mpi4py's handle) or a single process.

The collectives themselves run in the compiled runtime (helix._core.Communicator, MPI C API); mpi4py only
initializes MPI and hands over the communicator handle, so no Python-level MPI call is on the hot path.
"""

from __future__ import annotations

import atexit
import functools
import os
import select
import socket
import sys
import threading
import time
import traceback
from types import TracebackType
from typing import Any, NoReturn

__all__ = ["abort_on_exception", "from_mpi4py", "mpiexec", "self_communicator", "watch_peers", "world"]


def _mpi() -> Any | None:
    """mpi4py.MPI (initializing MPI), or None when mpi4py or its MPI library is unavailable."""
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError, OSError):
        return None
    return MPI


def self_communicator() -> Any:
    """A communicator of this process alone (size 1); needs no MPI."""
    from helix import _core

    return _core.self_communicator()


def from_mpi4py(comm: Any) -> Any:
    """The runtime's communicator over an mpi4py communicator (duplicated: traffic never mixes)."""
    from mpi4py import MPI

    from helix import _core

    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"from_mpi4py expects an mpi4py.MPI.Comm, got {type(comm).__name__}")
    return _core.mpi_communicator(int(MPI._handleof(comm)))


@functools.cache
def world() -> Any:
    """The communicator of all ranks: MPI's COMM_WORLD when mpi4py works, else a size-1 communicator.

    Cached: every call returns the same object (one duplicate of COMM_WORLD per process). The cache is
    dropped at exit, before mpi4py's MPI_Finalize (atexit runs in reverse order), so the duplicate is
    freed while MPI still runs.
    """
    MPI = _mpi()
    if MPI is None:
        return self_communicator()
    from helix import _core

    try:
        comm = from_mpi4py(MPI.COMM_WORLD)
    except _core.HelixError:
        # A build without MPI next to a working mpi4py (e.g. a system MPI): fine for one process.
        if MPI.COMM_WORLD.Get_size() > 1:
            raise
        return self_communicator()
    atexit.register(world.cache_clear)
    return comm


# How long a rank waits between writing its last words and MPI_Abort. mpiexec forwards stderr through
# its proxy, which stops reading once the abort starts the teardown; on a loaded 2-core machine 0.25 s
# was not always enough (the job ended with exit code 2 and no output at all).
ABORT_GRACE_S = 1.0


def abort_job(message: str, code: int) -> NoReturn:
    """Writes message to stderr, gives mpiexec a moment to forward it, then ends every rank (MPI_Abort)."""
    try:
        sys.stdout.flush()
        sys.stderr.write(message)
        sys.stderr.flush()
        time.sleep(ABORT_GRACE_S)
    finally:
        _mpi().COMM_WORLD.Abort(code)
    raise SystemExit(code)  # not reached: Abort does not return


_installed = False


def abort_on_exception() -> bool:
    """Make an uncaught exception on any rank end the whole MPI job, instead of hanging the other ranks.

    Installs sys.excepthook (and threading.excepthook) that prints the traceback prefixed with the rank
    and calls MPI.COMM_WORLD.Abort(1), so mpiexec exits non-zero within seconds. Does nothing (returns
    False) when there is a single process. Idempotent.
    """
    global _installed
    MPI = _mpi()
    if MPI is None or MPI.COMM_WORLD.Get_size() <= 1:
        return False
    if _installed:
        return True
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()

    def report_and_abort(
        exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, where: str
    ) -> None:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        prefix = f"[helix rank {rank}/{size}] "
        lines = [f"{prefix}uncaught exception in {where}; aborting all ranks (MPI_Abort)\n"]
        lines += [prefix + line + "\n" for line in text.rstrip("\n").split("\n")]
        abort_job("".join(lines), 1)

    def excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        report_and_abort(exc_type, exc, tb, "the main thread")

    def thread_excepthook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a thread"
        report_and_abort(
            args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback, f"thread {name}"
        )

    sys.excepthook = excepthook
    threading.excepthook = thread_excepthook
    _installed = True
    watch_peers()
    return True


_watching = False


def watch_peers() -> int:
    """Name the rank when a peer process dies without a word (SIGKILL, the OOM killer, a segfault).

    mpiexec (MPICH's hydra) then ends the job but names only some PID, not necessarily the dead one. Each
    rank shares its (host, pid) once; a daemon thread waits on a pidfd of every other rank on the same host
    (poll without the GIL; the engine's step releases it) and, when one exits, writes
    "[helix rank k/n] rank r (pid p) on <host> died: aborting all ranks" to stderr and calls MPI_Abort.
    Ranks on other hosts are not watched. Returns the number of peers watched; 0 for a single process or
    where pidfd_open is unavailable. Idempotent; abort_on_exception() calls it.
    """
    global _watching
    MPI = _mpi()
    if MPI is None or _watching or not hasattr(os, "pidfd_open"):
        return 0
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if size <= 1:
        return 0
    host = socket.gethostname()
    peers = comm.allgather((host, os.getpid()))
    fds: dict[int, tuple[int, int]] = {}  # pidfd -> (rank, pid)
    for r, (h, pid) in enumerate(peers):
        if r != rank and h == host:
            try:
                fds[os.pidfd_open(pid)] = (r, pid)
            except OSError:  # already gone, or no permission: leave it to mpiexec
                continue
    if not fds:
        return 0

    def watch() -> None:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        fd, _ = poller.poll()[0]
        dead, pid = fds[fd]
        abort_job(
            f"[helix rank {rank}/{size}] rank {dead} (pid {pid}) on {host} died: aborting all ranks\n",
            1,
        )

    threading.Thread(target=watch, name="helix-peer-watch", daemon=True).start()
    _watching = True
    return len(fds)


def mpiexec() -> str:
    """The mpiexec next to the interpreter (the venv's MPICH), else the one on PATH."""
    import shutil
    from pathlib import Path

    candidate = Path(sys.executable).parent / "mpiexec"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("mpiexec")
    if found is None:
        raise FileNotFoundError("mpiexec not found next to the interpreter or on PATH")
    return found

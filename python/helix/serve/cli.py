"""``python -m helix serve``: an OpenAI-compatible server on the Helix ranks.

    mpiexec -n N python -m helix serve --model DIR [layout flags of helix generate | --config helix.yaml]
        --host 127.0.0.1 --port 8000

Every rank loads its shard and runs the engine loop (helix.serve.engine_loop) in its main thread; rank 0
also runs the HTTP server (uvicorn, in a thread with its own event loop) on a socket it bound first, so
that a port in use is a clear error before anything is served. --port 0 takes a free port. Rank 0 prints
"helix serve: listening on http://HOST:PORT" once it answers.

SIGTERM or SIGINT (to mpiexec, which forwards them, or to rank 0): new requests get 503, running ones
finish within --drain-timeout seconds (then they are aborted), every rank leaves the loop at the same
step and exits 0. The other ranks ignore these signals and follow rank 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import threading
import time

from helix.generate_cli import add_model_arguments, make_llm

__all__ = ["ROLES", "build_parser", "main"]

ROLES = ("aggregated", "context", "generation")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="helix serve", description=__doc__.split("\n\n")[0])
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (rank 0)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on; 0 takes a free one")
    p.add_argument("--served-model-name", help="the model's name in the API (default: --model as given)")
    p.add_argument(
        "--max-waiting", type=int, default=256, help="requests waiting for KV blocks before 429 answers"
    )
    p.add_argument(
        "--default-max-tokens", type=int, default=256, help="chat requests without max_tokens (capped by KV)"
    )
    p.add_argument(
        "--drain-timeout", type=float, default=30.0, help="seconds to finish running requests on SIGTERM"
    )
    p.add_argument(
        "--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"]
    )
    p.add_argument(
        "--role",
        default="aggregated",
        choices=ROLES,
        help="aggregated: prefill and decode (default); context: prefill only, the KV handed over to a "
        "generation server; generation: decode requests handed over (docs/disaggregated.md)",
    )
    p.add_argument(
        "--handoff-timeout",
        type=float,
        default=30.0,
        help="seconds a KV hand-off may take (generation), and a handle waits for its claim (context)",
    )
    return p


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in [0, 65535], got {args.port}")
    for name in ("max_waiting", "default_max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.drain_timeout >= 0:
        raise ValueError(f"--drain-timeout must be >= 0, got {args.drain_timeout}")
    if not args.handoff_timeout > 0:
        raise ValueError(f"--handoff-timeout must be > 0, got {args.handoff_timeout}")
    if args.role != "aggregated" and args.device != "cpu":
        raise ValueError(f"--role {args.role} needs --device cpu: the KV hand-off reads host KV pools")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from helix import DeviceMemoryError
    from helix.comm import abort_job, abort_on_exception, world
    from helix.device import DeviceUnavailableError

    abort_on_exception()
    comm = world()
    from helix.disagg.agent import TransferUnavailableError, require_nixl

    try:
        _check_args(args)
        if args.role != "aggregated":
            require_nixl()  # before any weight is read
        sock = _listen(args.host, args.port) if comm.rank == 0 else None
        llm = make_llm(args, comm, progress=False)
    except (ValueError, OSError, DeviceUnavailableError, DeviceMemoryError, TransferUnavailableError) as exc:
        prefix = f"[rank {comm.rank}/{comm.size}] " if comm.size > 1 else ""
        message = f"{prefix}helix serve: error: {exc}\n"
        if comm.size > 1:
            abort_job(message, 2)
        print(message, end="", file=sys.stderr, flush=True)
        return 2
    _serve(args, llm, sock)
    return 0


def _serve(args: argparse.Namespace, llm, sock: socket.socket | None) -> None:
    from helix.serve.channel import ControlChannel
    from helix.serve.client import EngineClient

    channel = ControlChannel()
    client = EngineClient(args.max_waiting) if sock is not None else None
    make_loop, role = _role(args, llm, channel, client)
    if sock is None:  # the other ranks follow rank 0, which decides when to stop
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        make_loop(llm, channel).run()
        channel.close()
        return
    import uvicorn

    from helix.serve.app import make_app
    from helix.serve.metrics import ServerMetrics
    from helix.serve.prepare import ServedModel

    name = args.served_model_name or args.model
    served = ServedModel(
        name,
        args.model,
        llm.tokenizer,
        llm.engine.config.vocab_size,
        llm.max_request_tokens,
        args.default_max_tokens,
    )
    metrics = ServerMetrics(name, llm.engine.num_kv_blocks, args.speculative_tokens)
    config = uvicorn.Config(
        make_app(served, client, metrics, role),
        log_level=args.log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="off",
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        client.bind(asyncio.get_running_loop())
        await server.serve(sockets=[sock])

    http = threading.Thread(target=asyncio.run, args=(serve(),), name="helix-http", daemon=True)
    http.start()
    while not server.started:
        if not http.is_alive():
            raise RuntimeError("the HTTP server failed to start (see the log above)")
        time.sleep(0.01)
    host, port = sock.getsockname()[:2]
    print(f"helix serve: listening on http://{host}:{port} (model {name!r})", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: client.begin_drain())
    make_loop(llm, channel, client=client, metrics=metrics, drain_timeout=args.drain_timeout).run()
    server.should_exit = True
    http.join(timeout=10)
    channel.close()
    print("helix serve: stopped", flush=True)


def _role(args: argparse.Namespace, llm, channel, client):
    """(the engine loop's class with its role's arguments, rank 0's HTTP role or None). Collective: the
    disaggregated roles start a NIXL agent on the ranks that need one."""
    from helix.serve.engine_loop import EngineLoop

    if args.role == "aggregated":
        return EngineLoop, None
    import functools
    import uuid

    from helix.disagg.kv_file import model_fingerprint

    fingerprint = model_fingerprint(args.model)
    name = f"helix-{args.role}-{uuid.uuid4().hex[:12]}"
    if args.role == "context":
        from helix.serve.context_role import ContextLoop, ContextRole, register_sources

        agent, sources = register_sources(llm, channel, name)
        role = ContextRole(args.handoff_timeout, client.wake) if client is not None else None
        loop = functools.partial(
            ContextLoop, agent=agent, sources=sources, fingerprint=fingerprint, role=role
        )
        return loop, role
    from helix.disagg.agent import KVAgent
    from helix.serve.generation_role import GenerationLoop, GenerationRole

    agent = KVAgent(f"{name}-r{llm.engine.rank}")
    role = GenerationRole(llm, fingerprint, args.handoff_timeout) if client is not None else None
    return functools.partial(GenerationLoop, agent=agent, handoff_timeout=args.handoff_timeout), role

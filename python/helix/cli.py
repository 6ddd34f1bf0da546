"""Command line: ``python -m helix <command>``; under MPI: ``mpiexec -n N python -m helix <command>``.

Commands: generate, serve, router, make-tiny-model, demo, bench, plan, version.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main"]

# Commands implemented by a module's main(argv); imported only when used.
_DELEGATED = {
    "make-tiny-model": ("helix.tiny", "write a small random DeepSeek-V3-architecture checkpoint"),
    "demo": ("helix.demo", "sharded DeepSeek-V3-shaped attention vs unsharded, on this machine"),
    "plan": ("helix.planner", "roofline planner: layouts and the Pareto frontier for decode"),
    "generate": ("helix.generate_cli", "decode prompts with Helix parallelism across MPI ranks"),
    "serve": ("helix.serve.cli", "an OpenAI-compatible server on the Helix ranks (mpiexec -n N)"),
    "router": ("helix.serve.router", "the front of context and generation servers (disaggregated serving)"),
}
_BENCHES = {
    "attention": "helix.bench.attention",
    "attention-accuracy": "helix.bench.attention_accuracy",
    "helix": "helix.bench.helix_step",
    "ops": "helix.bench.ops",
    "decode": "helix.bench.decode",
    "peer": "helix.bench.peer",
    "serve": "helix.bench.serve",
    "disagg": "helix.bench.disagg",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="helix", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    bench = sub.add_parser("bench", help=f"benchmarks: {', '.join(_BENCHES)}", add_help=False)
    bench.add_argument("suite", nargs="?", choices=sorted(_BENCHES))
    sub.add_parser("version", help="print the version and the compiled features")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in _DELEGATED:
        return importlib.import_module(_DELEGATED[command][0]).main(rest) or 0
    if command == "bench":
        if not rest or rest[0] not in _BENCHES:
            parser.exit(2, f"helix bench: choose a suite: {', '.join(_BENCHES)}\n")
        return importlib.import_module(_BENCHES[rest[0]]).main(rest[1:]) or 0
    args = parser.parse_args(argv)
    if args.command == "version":
        import helix
        from helix import _core

        print(
            f"helix {helix.__version__}: cuda={_core.cuda.built_with_cuda()} "
            f"nccl={_core.cuda.built_with_nccl()} "
            f"gpus={_core.cuda.device_count()}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

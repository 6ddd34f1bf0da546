"""Command line: ``python -m helix <command>``; under MPI: ``mpiexec -n N python -m helix <command>``.

Commands: generate, serve, router, make-tiny-model, demo, bench, plan, version.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from helix.bench import SUITES

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


def _bench(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """`helix bench <suite> [args]`: the suite's main; a suite that needs what this machine lacks (a GPU)
    fails with one line and exit code 2."""
    if not argv or argv[0] not in SUITES:
        suites = "\n".join(f"  {name:20} {what}" for name, (_, what) in SUITES.items())
        parser.exit(2, f"helix bench: choose a suite:\n{suites}\n")
    from helix import _core

    try:
        return importlib.import_module(SUITES[argv[0]][0]).main(argv[1:]) or 0
    except _core.HelixError as e:
        parser.exit(2, f"helix bench {argv[0]}: error: {e}\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="helix", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    bench = sub.add_parser("bench", help=f"benchmarks: {', '.join(SUITES)}", add_help=False)
    bench.add_argument("suite", nargs="?", choices=sorted(SUITES))
    sub.add_parser("version", help="print the version and the compiled features")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in _DELEGATED:
        return importlib.import_module(_DELEGATED[command][0]).main(rest) or 0
    if command == "bench":
        return _bench(parser, rest)
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

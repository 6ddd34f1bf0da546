"""Command line: ``python -m helix <command>`` (also ``mpiexec -n N python -m helix <command>``)."""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="helix", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("version", help="print the version and build features")
    args = parser.parse_args(argv)
    if args.command == "version":
        import helix
        from helix import _core

        print(f"helix {helix.__version__} cuda={_core.cuda.built_with_cuda()} nccl={_core.cuda.built_with_nccl()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

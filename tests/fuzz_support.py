"""Shared pieces of the parser fuzz tests (tests/test_fuzz_*.py): settings, strategies, the contract.

The contract every reader is held to: an input gives either a valid result or the reader's one
documented exception type with a message naming the file, never another exception type, a crash, a hang
(hypothesis' deadline) or an allocation sized by an unchecked field (tracemalloc peak bound).

CI runs FUZZ_EXAMPLES examples per property (HELIX_FUZZ_EXAMPLES overrides it: e.g. 20000 for a long
local run); the counts per file are listed in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

__all__ = [
    "FUZZ_EXAMPLES",
    "FUZZ_SETTINGS",
    "json_values",
    "mutate_bytes",
    "deep_json",
    "expect_valid_or",
    "peak_allocation",
    "dumps",
]

FUZZ_EXAMPLES = int(os.environ.get("HELIX_FUZZ_EXAMPLES", "150"))
# A deadline per example catches hangs; it is generous because the CI machine's 2 cores are shared.
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=timedelta(seconds=5),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-4, max_value=70000),
    st.integers(),  # arbitrarily large: 2**70, -2**100
    st.sampled_from([0, 1, 2, 4, 32, 2**31, 2**63, 2**64, 10**30, -1]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["HELIX", "yarn", "fp8", "e4m3", "deepseek_v3", "F32", "BF16", "F8_E4M3", ""]),
)

# Any JSON-representable value (NaN and +-Infinity included: Python's json reads and writes them).
json_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def deep_json(depth: int, kind: str = "list") -> str:
    """A syntactically valid JSON document nested `depth` levels deep (past Python's recursion limit)."""
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@st.composite
def mutate_bytes(draw: Callable[..., Any], data: bytes) -> bytes:
    """`data` truncated, with bytes flipped, inserted or deleted, or with invalid UTF-8 spliced in."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "utf8"]))
        pos = draw(st.integers(0, len(out))) if out else 0
        if op == "truncate":
            del out[pos:]
        elif op == "flip" and pos < len(out):
            out[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":
            out[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 8))]
        elif op == "utf8":
            out[pos:pos] = draw(
                st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xfe\xfe"])
            )
    return bytes(out)


def expect_valid_or(error_type: type[Exception], path: Any, call: Callable[[], Any]) -> Any:
    """call() -> its result, or None when it raised `error_type` whose message names `path` (or one of
    the paths, when `path` is a list). Any other exception propagates (and fails the property)."""
    paths = [str(p) for p in path] if isinstance(path, list) else [str(path)]
    try:
        return call()
    except error_type as exc:
        assert any(p in str(exc) for p in paths), f"{error_type.__name__} names none of {paths}: {exc}"
        return None


@contextmanager
def peak_allocation(limit_bytes: int) -> Iterator[None]:
    """Fails when Python-visible allocations (NumPy's included) peak above limit_bytes inside the block."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= limit_bytes, f"peak allocation {peak} bytes exceeds the bound {limit_bytes}"


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")

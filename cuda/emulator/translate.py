#!/usr/bin/env python3
"""Rewrites one CUDA source (.cu) into C++ for the SIMT emulator (HELIX_ENABLE_CUDA=EMULATOR).

Three constructs change; everything else is passed through byte for byte (a `#line` directive keeps
compiler messages and std::source_location pointing at the original file and line):

  kernel<T><<<grid, block[, smem[, stream]]>>>(args)
      -> ::simt::launch(kernel<T>, "kernel<T>", <__launch_bounds__ of kernel or 0>, grid, block...)(args)
  extern __shared__ [__align__(n)] T name[];
      -> T* name = reinterpret_cast<T*>(::simt::dynamic_shared());
  __shared__ T a[N], b;        (static shared memory, per block, 0xFF-filled at every block start)
      -> T (&a)[N] = *static_cast<T (*)[N]>(::simt::detail::static_shared(&key, sizeof(T[N]), align)); ...

Comments and string literals are never rewritten. Anything else that mentions `<<<` or `__shared__`
(a launch of a kernel not defined in the same file, an initialized __shared__ variable, ...) stops
the build with the file and line: the emulator must not silently run something it did not understand.

Usage: translate.py INPUT.cu OUTPUT.cpp
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["translate", "TranslateError"]


class TranslateError(Exception):
    """A construct the translator cannot rewrite faithfully."""


def _mask(src: str) -> str:
    """src with comments, string and character literals blanked (newlines kept), for matching only."""
    out = list(src)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            for k in range(i, j):
                out[k] = " "
            i = j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            for k in range(i + 1, min(j, n)):
                out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _line(src: str, pos: int) -> int:
    return src.count("\n", 0, pos) + 1


_KERNEL_DEF = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\(([^()]*)\)\s*)?([A-Za-z_]\w*)\s*\(")
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*(\d+)\s*\)\s*)?([A-Za-z_][\w\s:<>*]*?)\s+([A-Za-z_]\w*)\s*\[\s*\]\s*;"
)
_STATIC_SHARED = re.compile(r"__shared__\s+([^;]*);")
_DECL = re.compile(r"^\s*([A-Za-z_]\w*)\s*((?:\[[^\[\]]+\])*)\s*$")


def _kernel_expr_start(masked: str, end: int) -> int:
    """Start of the kernel expression that ends right before `<<<` at `end` (name, template args, ::)."""
    i = end
    while i > 0 and masked[i - 1].isspace():
        i -= 1
    if i > 0 and masked[i - 1] == ">":  # template arguments: walk back over balanced <...>
        depth = 0
        while i > 0:
            i -= 1
            if masked[i] == ">":
                depth += 1
            elif masked[i] == "<":
                depth -= 1
                if depth == 0:
                    break
        else:
            raise TranslateError("unbalanced template arguments before <<<")
    while i > 0 and (masked[i - 1].isalnum() or masked[i - 1] in "_:"):
        i -= 1
    return i


def translate(src: str, path: str) -> str:
    masked = _mask(src)
    bounds = {m.group(2): (m.group(1) or "0").strip() for m in _KERNEL_DEF.finditer(masked)}
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) on src

    def fail(pos: int, what: str) -> None:
        raise TranslateError(f"{path}:{_line(src, pos)}: {what}")

    # Launches.
    for m in re.finditer(r"<<<", masked):
        start = _kernel_expr_start(masked, m.start())
        expr = src[start : m.start()].strip()
        base = re.sub(r"<.*", "", expr).split("::")[-1].strip()
        if not re.fullmatch(r"[A-Za-z_]\w*", base):
            fail(m.start(), f"cannot find the kernel name before <<< (got '{expr}')")
        if base not in bounds:
            fail(m.start(), f"kernel '{base}' is launched but not defined with __global__ void in this file")
        close = masked.find(">>>", m.end())
        if close < 0:
            fail(m.start(), "<<< without >>>")
        config = src[m.end() : close]
        if not config.strip():
            fail(m.start(), "empty launch configuration")
        after = masked[close + 3 :].lstrip()
        if not after.startswith("("):
            fail(m.start(), "a launch must be followed by its argument list")
        name_literal = " ".join(expr.split()).replace('"', "")
        edits.append(
            (start, close + 3, f'::simt::launch({expr}, "{name_literal}", {bounds[base]}, {config})')
        )

    # Dynamic shared memory.
    extern_spans = []
    for m in _EXTERN_SHARED.finditer(masked):
        type_, name = " ".join(m.group(2).split()), m.group(3)
        text = src[m.start() : m.end()]
        pad = "\n" * text.count("\n")
        decl = f"{type_}* {name} = reinterpret_cast<{type_}*>(::simt::dynamic_shared());"
        edits.append((m.start(), m.end(), decl + pad))
        extern_spans.append((m.start(), m.end()))

    # Static shared memory.
    for m in _STATIC_SHARED.finditer(masked):
        if any(a <= m.start() < b for a, b in extern_spans):
            continue
        body = m.group(1)
        align = "0"
        am = re.search(r"__align__\s*\(\s*(\d+)\s*\)", body)
        if am:
            align = am.group(1)
            body = body[: am.start()] + body[am.end() :]
        if "=" in body or "(" in body:
            fail(m.start(), "a __shared__ declaration with an initializer or a function-like declarator")
        parts = [p for p in re.split(r",(?![^\[]*\])", body)]
        first = re.match(r"^\s*(.*?)\s*\b([A-Za-z_]\w*)\s*((?:\[[^\[\]]+\])*)\s*$", parts[0], re.S)
        if not first or not first.group(1).strip():
            fail(m.start(), f"cannot parse the __shared__ declaration '{m.group(0)}'")
        type_ = " ".join(first.group(1).split())
        decls = [(first.group(2), first.group(3))]
        for p in parts[1:]:
            d = _DECL.match(p)
            if not d:
                fail(m.start(), f"cannot parse the declarator '{p.strip()}'")
            decls.append((d.group(1), d.group(2)))
        out = []
        for name, dims in decls:
            key = f"simt_shared_key_{name}_{_line(src, m.start())}"
            full = f"{type_}{dims}"
            ref = f"{type_} (&{name}){dims}" if dims else f"{type_}& {name}"
            ptr = f"{type_} (*){dims}" if dims else f"{type_}*"
            alignment = (
                f"alignof({type_})"
                if align == "0"
                else f"(alignof({type_}) > {align} ? alignof({type_}) : {align})"
            )
            out.append(
                f"static const char {key} = 0; {ref} = *static_cast<{ptr}>("
                f"::simt::detail::static_shared(&{key}, sizeof({full}), {alignment}));"
            )
        pad = "\n" * src[m.start() : m.end()].count("\n")
        edits.append((m.start(), m.end(), " ".join(out) + pad))

    # Everything rewritten must have been matched; leftovers fail loudly.
    covered = sorted(edits)
    for a, b in zip(covered, covered[1:], strict=False):
        if b[0] < a[1]:
            fail(b[0], "overlapping rewrites (a launch inside a shared declaration?)")
    result = []
    last = 0
    for start, end, text in covered:
        result.append(src[last:start])
        result.append(text)
        last = end
    result.append(src[last:])
    out = "".join(result)
    out_masked = _mask(out)
    for token in ("<<<", ">>>", "__shared__"):
        pos = out_masked.find(token)
        if pos >= 0:
            raise TranslateError(
                f"{path}:{_line(out, pos)}: '{token}' left that the translator could not rewrite"
            )
    return f'#line 1 "{path}"\n' + out


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src_path, out_path = Path(argv[1]).resolve(), Path(argv[2])
    try:
        text = translate(src_path.read_text(encoding="utf-8"), str(src_path))
    except TranslateError as e:
        print(f"translate.py: error: {e}", file=sys.stderr)
        return 1
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

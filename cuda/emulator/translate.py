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

The "arg names" string of a launch names the kernel's parameters for the emulator's messages, and the
fields of a struct parameter: `p{q,q_pos,...},chunk,num_splits`. Struct definitions are read from the
.cu and the project headers it includes (quoted includes found next to it or in the -I folders). The
launch checks these names against the parameters' real types, and every pointer in them against the
device allocations (cuda/emulator/include/simt_fields.hpp): the names only label, they decide nothing.

Comments and string literals are never rewritten. Anything else that mentions `<<<` or `__shared__`
(a launch of a kernel not defined in the same file, an initialized __shared__ variable, ...) stops
the build with the file and line: the emulator must not silently run something it did not understand.

Usage: translate.py INPUT.cu OUTPUT.cpp [-I DIR]...
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

__all__ = ["translate", "TranslateError", "struct_fields", "kernel_params"]


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


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"', re.M)
_STRUCT = re.compile(r"\bstruct\s+([A-Za-z_]\w*)\s*(?:final\s*)?\{")
_IDENT = re.compile(r"[A-Za-z_]\w*")
_NOT_A_FIELD = re.compile(r"(?:static|using|typedef|friend|template|enum|struct|class|union|static_assert)\b")


def _closing(masked: str, open_pos: int) -> int:
    """Index of the bracket closing the one at open_pos ({ or ()."""
    pair = {"{": "}", "(": ")"}[masked[open_pos]]
    depth = 0
    for i in range(open_pos, len(masked)):
        if masked[i] == masked[open_pos]:
            depth += 1
        elif masked[i] == pair:
            depth -= 1
            if depth == 0:
                return i
    raise TranslateError(f"unbalanced '{masked[open_pos]}'")


def _split_top(text: str, sep: str) -> list[str]:
    """text split at `sep` outside (), [], {} and <>."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in "([{<":
            depth += 1
        elif c in ")]}>":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _declared_name(declarator: str) -> str:
    """The name in `T name[N] = init` / `name : 3` / `name{init}` (the last identifier before them)."""
    d = _split_top(declarator, "=")[0]
    d = re.sub(r"\[[^\]]*\]|\{[^}]*\}", " ", d)
    d = re.split(r"(?<!:):(?!:)", d)[0]
    names = _IDENT.findall(d)
    return names[-1] if names else ""


def struct_fields(src: str) -> dict[str, list[str]]:
    """Data member names of every `struct Name {...}` in src, in declaration order (member functions,
    static members, nested types and access specifiers skipped)."""
    masked = _mask(src)
    out: dict[str, list[str]] = {}
    for m in _STRUCT.finditer(masked):
        body = masked[m.end() : _closing(masked, m.end() - 1)]
        flat, depth = [], 0  # body with nested {...} (function bodies, brace initializers) made a ';'
        for c in body:
            if c == "{":
                depth += 1
                if depth == 1:
                    flat.append(";")
            elif c == "}":
                depth -= 1
            elif depth == 0:
                flat.append(c)
        fields = []
        for stmt in "".join(flat).split(";"):
            stmt = re.sub(r"^\s*(?:(?:public|private|protected)\s*:(?!:)\s*)*", "", stmt).strip()
            first = _split_top(stmt, ",")[0]
            if not stmt or _NOT_A_FIELD.match(stmt) or "(" in _split_top(first, "=")[0]:
                continue  # a member function, constructor, type or static member
            decls = _split_top(stmt, ",")
            if len(_IDENT.findall(_split_top(decls[0], "=")[0])) < 2:
                continue  # no type before the name: not a data member we understand
            fields += [_declared_name(d) for d in decls]
        out.setdefault(m.group(1), fields)  # the first definition: the .cu's own before its headers'
    return out


def _with_includes(src: str, path: str, include_dirs: tuple[str, ...], seen: set[Path]) -> str:
    """src followed by the text of the project headers it includes, recursively (each once)."""
    texts = [src]
    for name in _INCLUDE.findall(src):
        for base in (Path(path).parent, *map(Path, include_dirs)):
            header = (base / name).resolve()
            if header.is_file():
                if header not in seen:
                    seen.add(header)
                    text = header.read_text(encoding="utf-8")
                    texts.append(_with_includes(text, str(header), include_dirs, seen))
                break
    return "\n".join(texts)


def kernel_params(src: str) -> dict[str, list[tuple[str, str | None]]]:
    """Every __global__ kernel in src: its parameters as (name, type), where type is the last word of a
    by-value parameter's type ("RopeParams", "int64_t") and None for pointers and references."""
    masked = _mask(src)
    out: dict[str, list[tuple[str, str | None]]] = {}
    for m in _KERNEL_DEF.finditer(masked):
        params = masked[m.end() : _closing(masked, m.end() - 1)]
        found: list[tuple[str, str | None]] = []
        for i, param in enumerate(p for p in _split_top(params, ",") if p.strip()):
            decl = _split_top(param, "=")[0]
            words = _IDENT.findall(re.sub(r"<[^<>]*>", " ", decl))
            by_value = len(words) >= 2 and "*" not in decl and "&" not in decl
            found.append((words[-1] if len(words) >= 2 else f"arg{i}", words[-2] if by_value else None))
        if out.setdefault(m.group(2), found) != found:
            raise TranslateError(f"overloaded kernel '{m.group(2)}' (parameters are named per kernel name)")
    return out


def _arg_names(params: list[tuple[str, str | None]], structs: dict[str, list[str]]) -> str:
    """A launch's "arg names": `p{field,...}` for a struct parameter whose definition was read."""
    return ",".join(f"{n}{{{','.join(structs[t])}}}" if structs.get(t) else n for n, t in params)


def translate(src: str, path: str, include_dirs: tuple[str, ...] = ()) -> str:
    masked = _mask(src)
    bounds = {m.group(2): (m.group(1) or "0").strip() for m in _KERNEL_DEF.finditer(masked)}
    structs = struct_fields(_with_includes(src, path, include_dirs, set()))
    try:
        arg_names = {k: _arg_names(params, structs) for k, params in kernel_params(src).items()}
    except TranslateError as e:
        raise TranslateError(f"{path}: {e}") from None
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
        launch = f'::simt::launch({expr}, "{name_literal}", "{arg_names[base]}", {bounds[base]}, {config})'
        edits.append((start, close + 3, launch))

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
    include_dirs = tuple(argv[i + 1] for i in range(3, len(argv) - 1, 2) if argv[i] == "-I")
    if len(argv) < 3 or len(argv) != 3 + 2 * len(include_dirs):
        print(__doc__, file=sys.stderr)
        return 2
    src_path, out_path = Path(argv[1]).resolve(), Path(argv[2])
    try:
        text = translate(src_path.read_text(encoding="utf-8"), str(src_path), include_dirs)
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

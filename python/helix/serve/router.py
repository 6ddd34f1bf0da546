"""``python -m helix router``: the OpenAI-compatible front of a disaggregated deployment.

    python -m helix router --context URL [--context URL ...] --generation URL [--generation URL ...] \\
        --host 127.0.0.1 --port 8000

Each request (/v1/completions, /v1/chat/completions) goes to a context server (round robin) with
max_tokens 1: it prefills and answers the first token and a KV handle. Then the request goes, with the
handle, to a generation server (round robin), which pulls the KV through NIXL, re-sharded to its own layout,
and decodes; its answer (streamed or not) is relayed as is. A request the first token already finished is
answered from the context server's response. Errors of either server are passed through with their status;
a server that cannot be reached is a 502 naming it. The router itself holds no model.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import sys
import threading
import urllib.error
import urllib.parse
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from helix.serve.protocol import ApiError

__all__ = ["build_parser", "main", "make_router_app"]


def _post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    """(status, JSON answer) of a POST; a server that cannot be reached raises ApiError 502."""
    import urllib.request

    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, ApiError(exc.code, f"{url}: {exc}").body()
    except (OSError, ValueError) as exc:
        raise ApiError(502, f"{url} unreachable: {exc}") from None


def _release(context: str, handle: str) -> None:
    threading.Thread(
        target=_post, args=(context + "/v1/kv/release", {"handle": handle}, 10), daemon=True
    ).start()


async def _relay(url: str, body: dict, timeout: float) -> AsyncIterator[bytes]:
    """The lines of a streamed POST answer, read by a thread; closing the generator closes the upstream
    connection (the generation server then aborts the request)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | None] = asyncio.Queue()

    def read() -> None:
        try:
            conn.request("POST", parts.path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            while line := resp.readline():
                loop.call_soon_threadsafe(lines.put_nowait, line)
        except OSError as exc:
            err = f"data: {json.dumps(ApiError(502, f'{url}: {exc}').body())}\n\n".encode()
            loop.call_soon_threadsafe(lines.put_nowait, err)
        finally:
            loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read, name="helix-router-relay", daemon=True).start()
    try:
        while (line := await lines.get()) is not None:
            yield line
    finally:
        conn.close()


def _as_stream(answer: dict, chat: bool) -> AsyncIterator[bytes]:
    """A finished non-streamed answer as server-sent events (one chunk, then [DONE])."""
    choice = dict(answer["choices"][0])
    if chat:
        choice["delta"] = choice.pop("message")
    chunk = {**answer, "object": "chat.completion.chunk" if chat else "text_completion", "choices": [choice]}

    async def events() -> AsyncIterator[bytes]:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    return events()


def make_router_app(context: list[str], generation: list[str], timeout: float) -> FastAPI:
    app = FastAPI(title="helix router", docs_url=None, redoc_url=None, openapi_url=None)
    next_context, next_generation = itertools.cycle(context), itertools.cycle(generation)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"context": context, "generation": generation})

    @app.get("/v1/models")
    async def models() -> Response:
        import urllib.request

        try:
            with await asyncio.to_thread(
                urllib.request.urlopen, generation[0] + "/v1/models", timeout=10
            ) as r:
                return Response(r.read(), media_type="application/json")
        except OSError as exc:
            raise ApiError(502, f"{generation[0]} unreachable: {exc}") from None

    async def route(request: Request, path: str, chat: bool) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise ApiError(400, f"the body is not valid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        ctx, gen = next(next_context), next(next_generation)
        prefill = {
            **body,
            "stream": False,
            "stream_options": None,
            "max_tokens": 1,
            "max_completion_tokens": None,
        }
        status, answer = await asyncio.to_thread(_post, ctx + path, prefill, timeout)
        if status != 200:
            return JSONResponse(answer, status)
        handle = answer.get("kv_transfer_params", {}).get("handle")
        asked = body.get("max_completion_tokens") or body.get("max_tokens")
        if answer["choices"][0]["finish_reason"] == "stop" or asked == 1 or handle is None:
            if handle is not None:
                _release(ctx, handle)
            answer.pop("kv_transfer_params", None)
            stream = body.get("stream") is True
            return StreamingResponse(_as_stream(answer, chat)) if stream else JSONResponse(answer)
        decode = {**body, "kv_transfer_params": {"context_url": ctx, "handle": handle}}
        if body.get("stream") is True:
            return StreamingResponse(_relay(gen + path, decode, timeout), media_type="text/event-stream")
        status, answer = await asyncio.to_thread(_post, gen + path, decode, timeout)
        return JSONResponse(answer, status)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await route(request, "/v1/completions", chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await route(request, "/v1/chat/completions", chat=True)

    return app


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="helix router", description=__doc__.split("\n\n")[0])
    p.add_argument("--context", action="append", required=True, metavar="URL", help="a context server")
    p.add_argument("--generation", action="append", required=True, metavar="URL", help="a generation server")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 takes a free one")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for one request to either server")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info"])
    return p


def _url(value: str, flag: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme != "http" or not parts.hostname or not parts.port:
        raise ValueError(f"{flag} must be http://HOST:PORT, got {value!r}")
    return f"http://{parts.hostname}:{parts.port}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    from helix.serve.cli import _listen

    try:
        context = [_url(u, "--context") for u in args.context]
        generation = [_url(u, "--generation") for u in args.generation]
        sock = _listen(args.host, args.port)
    except (ValueError, OSError) as exc:
        print(f"helix router: error: {exc}", file=sys.stderr)
        return 2
    app = make_router_app(context, generation, args.timeout)
    config = uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    host, port = sock.getsockname()[:2]
    print(f"helix router: listening on http://{host}:{port}", flush=True)
    asyncio.run(server.serve(sockets=[sock]))
    return 0

"""The HTTP front end on rank 0 (FastAPI): /v1/completions, /v1/chat/completions, /v1/models, /health,
/metrics. Handlers validate (protocol, prepare), submit to the engine loop through the EngineClient and
wait on the request's queue; they never touch the engine. A client that disconnects, streaming or not,
aborts its request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from helix.serve.client import Delta, EngineClient
from helix.serve.metrics import ServerMetrics
from helix.serve.prepare import PreparedRequest, ServedModel
from helix.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest, parse_body
from helix.serve.responses import ResponseBuilder

__all__ = ["make_app"]


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _wait_for_disconnect(request: Request) -> None:
    """Returns when the client has gone (the body was read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def make_app(served: ServedModel, client: EngineClient, metrics: ServerMetrics, role=None) -> FastAPI:
    """role: a disaggregated role (helix.serve.context_role / generation_role) or None (aggregated): it
    admits each request (role.admit) and adds its own routes (role.add_routes)."""
    app = FastAPI(title="helix serve", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(ApiError(500, f"internal error: {type(exc).__name__}: {exc}").body(), 500)

    @app.get("/health")
    async def health() -> Response:
        if client.draining:
            return JSONResponse(ApiError(503, "the server is shutting down").body(), 503)
        return JSONResponse({})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        card = {
            "id": served.name,
            "object": "model",
            "created": 0,
            "owned_by": "helix",
            "max_model_len": served.max_request_tokens,
        }
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse_body(await request.body(), CompletionRequest)
        prepared, handoff = await _admit(role, req, served.completion(req))
        builder = _builder(served, req, prepared, chat=False, logprobs=req.logprobs is not None)
        return await _serve(request, client, req.stream, prepared, builder, handoff)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse_body(await request.body(), ChatCompletionRequest)
        prepared, handoff = await _admit(role, req, served.chat(req))
        builder = _builder(served, req, prepared, chat=True, logprobs=req.logprobs)
        return await _serve(request, client, req.stream, prepared, builder, handoff)

    if role is not None:
        role.add_routes(app)
    return app


async def _admit(role, req, prepared: PreparedRequest) -> tuple[PreparedRequest, object | None]:
    """The role's view of a validated request: (what the engine runs, the KV hand-off), or (as is, None)."""
    return (prepared, None) if role is None else await role.admit(req, prepared)


def _builder(served, req, prepared: PreparedRequest, *, chat: bool, logprobs: bool) -> ResponseBuilder:
    return ResponseBuilder(
        chat=chat,
        model=served.name,
        prompt=prepared.prompt,
        tokenizer=served.tokenizer,
        logprobs=logprobs,
        return_token_ids=req.return_token_ids,
        include_usage=bool(req.stream and req.stream_options and req.stream_options.include_usage),
    )


async def _serve(
    request: Request,
    client: EngineClient,
    stream: bool,
    prepared: PreparedRequest,
    builder: ResponseBuilder,
    handoff: object | None = None,
) -> Response:
    key, deltas = client.submit(prepared.prompt, prepared.params, handoff)
    if stream:
        return StreamingResponse(_stream(client, key, deltas, builder), media_type="text/event-stream")
    collect = asyncio.ensure_future(_collect(deltas))
    gone = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not collect.done():
            collect.cancel()
            client.abort(key)
    if not collect.done() or collect.cancelled():
        return Response(status_code=499)  # the client has gone: nobody reads this
    got = collect.result()
    if got[-1].finish_reason == "refused":
        raise ApiError(got[-1].error_status, got[-1].error or "the request was refused")
    return JSONResponse(builder.response(got))


async def _collect(deltas: asyncio.Queue[Delta]) -> list[Delta]:
    got = [await deltas.get()]
    while not got[-1].finished:
        got.append(await deltas.get())
    return got


async def _stream(
    client: EngineClient, key: int, deltas: asyncio.Queue[Delta], builder: ResponseBuilder
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per token; aborts the request if the client goes first (Starlette
    cancels this generator when the connection closes)."""
    finished = False
    try:
        while not finished:
            delta = await deltas.get()
            finished = delta.finished
            if delta.finish_reason == "refused":
                yield _sse(ApiError(delta.error_status, delta.error or "the request was refused").body())
                break
            yield _sse(builder.chunk(delta))
            if finished and builder.include_usage:
                yield _sse(builder.usage_chunk(delta.completion_tokens))
        yield "data: [DONE]\n\n"
    finally:
        if not finished:
            client.abort(key)

"""``helix serve``: an OpenAI-compatible HTTP server on the MPI job that holds the Helix ranks.

Rank 0 runs the HTTP front end (FastAPI on uvicorn, in a thread) and, before every engine step,
broadcasts what arrived and what was cancelled; every rank then makes the same helix.LLM calls
(DESIGN.md §4, Serving). One role per module:

- protocol: the request bodies (validation) and OpenAI-style errors
- prepare: request -> prompt token ids + SamplingParams, with every check against the model and KV pool
- chat: the model's Jinja chat template
- responses: response bodies and stream chunks
- client: rank 0's thread-safe bridge between the HTTP event loop and the engine loop
- channel: rank 0 -> all ranks broadcast of each iteration's commands, idle ranks asleep
- engine_loop: the loop every rank runs
- metrics: Prometheus text format
- app: the FastAPI routes
- cli: ``python -m helix serve``
"""

from __future__ import annotations

__all__: list[str] = []

"""The OpenAI-style generation endpoints: `POST /v1/completions` and `POST /v1/classify` (rank classification).
They parse the body, hand it to the `CompletionService` (`service.py`) and write its answer: JSON, or
server-sent events for `stream: true` (OpenAI's chunks, then `data: [DONE]`)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from .errors import ApiError, event_error
from .scheduler import Job
from .schemas import (
    Classification,
    ClassifyRequest,
    ClassifyResponse,
    CompletionChunk,
    CompletionRequest,
    CompletionResponse,
    StreamChoice,
    Usage,
)
from .service import CompletionService, Delta, unexpected
from .validation import plan_classify

router = APIRouter()


def service_of(request: Request) -> CompletionService:
    return request.app.state.service


def sse(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream")


async def guarded(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """`events`, then `[DONE]`; an error after the stream started becomes one `error` event."""
    try:
        async for event in events:
            yield event
        yield "data: [DONE]\n\n"
    except ApiError as exc:
        yield event_error(exc)
    except Exception as exc:  # noqa: BLE001 -- the stream has started: report it in the stream
        yield event_error(unexpected(exc))


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, request: Request):
    service = service_of(request)
    plan = await service.plan_off_loop(body)
    if not plan.stream:
        return await service.complete(plan, request.is_disconnected)
    deltas = await service.stream(plan)  # refusals (429, 503, 400) are plain error responses
    ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: Delta) -> str:
        choices = [] if delta.usage is not None else [
            StreamChoice(text=delta.text, index=delta.index, finish_reason=delta.finish_reason)]
        out = CompletionChunk(id=ident, created=created, model=plan.model, choices=choices, usage=delta.usage)
        body = out.model_dump()
        if not plan.include_usage:
            del body["usage"]
        return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

    async def events():
        async for delta in deltas:
            if delta.text or delta.finish_reason or delta.usage is not None:
                yield chunk(delta)

    return sse(guarded(events()))


@router.post("/v1/classify", response_model=ClassifyResponse)
async def classify(body: ClassifyRequest, request: Request):
    service = service_of(request)
    service.known(body.model)
    ids, label_ids = await asyncio.to_thread(plan_classify, body, service.settings, service.codec, service.caps)
    jobs = [Job("classify", body.model, row, label_ids=label_ids) for row in ids]
    results = await service.run(jobs, request.is_disconnected)
    lengths = [len(x) for x in label_ids]
    data = []
    for i, scores in enumerate(results):
        rank = [s / n for s, n in zip(scores, lengths, strict=True)] if body.length_normalize else scores
        best = max(range(len(rank)), key=rank.__getitem__)
        data.append(Classification(index=i, label=body.labels[best], scores=scores))
    prompt_tokens, label_tokens = sum(map(len, ids)), sum(lengths) * len(ids)
    return ClassifyResponse(model=body.model, data=data,
                            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=label_tokens,
                                        total_tokens=prompt_tokens + label_tokens))

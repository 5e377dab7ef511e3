"""`POST /v1/chat/completions` for bases whose tokenizer has a chat template: the messages are rendered with
the template (the generation prompt added), then served as a completion of those tokens -- same validation,
same running batch, same stop strings and sampling. A base without a template answers 400, pointing to
`/v1/completions`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from .errors import ApiError, one_line
from .limits import check_unicode
from .routes_completions import guarded, service_of, sse
from .schemas import CompletionRequest, StreamOptions, Usage

router = APIRouter()


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatRequest(_Strict):
    """OpenAI's chat completion request, the fields this server serves (others are a 422 naming them)."""

    model: str = Field(description="adapter name (see GET /v1/models)")
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    user: str | None = None


def render(tokenizer, messages: list[ChatMessage]) -> list[int]:
    """The token ids of `messages` under the tokenizer's chat template, ready for the assistant's reply."""
    if not getattr(tokenizer, "chat_template", None):
        raise ApiError(400, "this base model's tokenizer has no chat template, so chat messages cannot be turned "
                       "into its input; send the text yourself to POST /v1/completions, or serve a base whose "
                       "tokenizer defines chat_template.", param="messages")
    conversation = [{"role": m.role, "content": m.text()} for m in messages]
    try:
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    except Exception as exc:  # noqa: BLE001 -- a template that refuses these messages (e.g. role order)
        raise ApiError(400, f"the chat template refused these messages: {one_line(exc)}", param="messages") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@router.post("/v1/chat/completions")
async def chat(body: ChatRequest, request: Request):
    service = service_of(request)
    service.known(body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "top_logprobs needs logprobs=true.", param="top_logprobs")
    check_unicode([m.text() for m in body.messages], "messages")
    if sum(len(m.text()) for m in body.messages) > service.settings.max_input_chars:
        raise ApiError(400, f"messages hold more than {service.settings.max_input_chars} characters "
                       "(--max-input-chars); shorten them.", param="messages")
    ids = await asyncio.to_thread(render, service.codec.tokenizer, body.messages)
    fields = body.model_dump(exclude={"messages", "max_completion_tokens", "logprobs", "top_logprobs"},
                             exclude_none=True)
    fields["max_tokens"] = body.max_completion_tokens or body.max_tokens or service.settings.max_tokens
    if body.logprobs:
        fields["logprobs"] = body.top_logprobs or 0
    plan = await service.plan_off_loop(CompletionRequest(prompt=ids, **fields))
    ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if not plan.stream:
        results = await service.run(service.jobs(plan), request.is_disconnected)
        choices = []
        for i, result in enumerate(results):
            choice = service.choice(plan, i, result)
            logprobs = None
            if choice.logprobs is not None:
                lp = choice.logprobs
                logprobs = {"content": [
                    {"token": t, "logprob": v, "bytes": list(t.encode()),
                     "top_logprobs": [{"token": k, "logprob": x, "bytes": list(k.encode())}
                                      for k, x in (top or {}).items()]}
                    for t, v, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True)]}
            choices.append({"index": i, "message": {"role": "assistant", "content": choice.text},
                            "logprobs": logprobs, "finish_reason": choice.finish_reason})
        return {"id": ident, "object": "chat.completion", "created": created, "model": plan.model,
                "choices": choices, "usage": service.usage(plan, results).model_dump()}
    deltas = await service.stream(plan)

    def chunk(choices: list, usage: Usage | None = None) -> str:
        out: dict = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": plan.model,
                     "choices": choices}
        if plan.include_usage:
            out["usage"] = usage.model_dump() if usage is not None else None
        return f"data: {json.dumps(out, separators=(',', ':'))}\n\n"

    async def events():
        for i in range(plan.rows):  # OpenAI's first chunk of each choice: the role
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                          "finish_reason": None}])
        async for delta in deltas:
            if delta.usage is not None:
                yield chunk([], delta.usage)
            elif delta.text or delta.finish_reason:
                content = {"content": delta.text} if delta.text else {}
                yield chunk([{"index": delta.index, "delta": content, "logprobs": None,
                              "finish_reason": delta.finish_reason}])

    return sse(guarded(events()))


__all__ = ["ChatRequest", "render", "router"]

"""The completion logic of `softprompt serve`, apart from HTTP (as vLLM's `serving_completion.py`): a
`CompletionService` turns a validated `GenerationPlan` into engine jobs, waits for them (or streams them) and
builds OpenAI's answer. Tests call it directly on an in-process backend; the routers (`routes_*.py`) only parse
bodies, call it and write its answers.

Every choice is one row of the engine's running batch with its own `RowOptions` (sampling, penalties, logit
bias, log-probabilities, echo, stop strings), so requests with different parameters share decoding steps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from .errors import ApiError, engine_failure, one_line
from .limits import check_unicode, clip
from .output import TextStream, completion_logprobs, cut_at_stop
from .sampling import FinishReason
from .scheduler import Job
from .schemas import CompletionChoice, CompletionResponse, Usage
from .settings import ServeSettings
from .validation import Capabilities, GenerationPlan, check_cheap, plan_completion

DISCONNECT_POLL_S = 0.1  # how often a non-streaming request checks that its client still waits


@dataclass
class Delta:
    """One streamed event of a choice: the text it adds; `finish_reason` on its last; `usage` on the final
    usage event (choice -1)."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


class CompletionService:
    """Completions over an engine backend (`backend.EngineBackend`)."""

    def __init__(self, backend, settings: ServeSettings):
        self.backend, self.settings = backend, settings
        self.codec = backend.codec
        self.caps = Capabilities.of(backend)

    # ------------------------------------------------------------------------------------------ requests
    def known(self, name: str) -> None:
        check_unicode(name, "model")
        if not self.backend.serves(name):
            raise ApiError(404, f"adapter {clip(name)} is not served; served adapters: "
                           f"{sorted(self.backend.adapters.sources)} (GET /v1/models).", "not_found_error",
                           param="model")

    def plan(self, body) -> GenerationPlan:
        """A `CompletionRequest`, validated: its plan, or the `ApiError` naming the field."""
        self.known(body.model)
        return plan_completion(body, self.settings, self.codec, self.caps)

    async def plan_off_loop(self, body) -> GenerationPlan:
        """`plan`, its tokenising in a worker thread: the event loop keeps answering other requests (the cheap
        bounds run first, here, so an oversized prompt never reaches the tokenizer)."""
        self.known(body.model)
        check_cheap(body, self.settings, self.caps)
        return await asyncio.to_thread(plan_completion, body, self.settings, self.codec, self.caps)

    def jobs(self, plan: GenerationPlan) -> list[Job]:
        """One "generate" job per choice, in choice order (prompt i's choices i*n .. i*n + n - 1)."""
        return [Job("generate", plan.model, ids, max_new_tokens=plan.max_tokens, options=options)
                for ids in plan.prompts for options in plan.options]

    # ------------------------------------------------------------------------------------------ running
    async def submit(self, jobs: list[Job]) -> list:
        """Queue `jobs` (all or none) with the request's deadline; their futures. Raises the ApiError."""
        if len(jobs) > self.settings.max_queue:
            raise ApiError(400, f"the request holds {len(jobs)} rows, more than this server queues at once "
                           f"({self.settings.max_queue}, --max-queue); split it.")
        deadline = time.monotonic() + self.settings.request_timeout_s
        for job in jobs:
            job.deadline = deadline
        try:
            return await self.backend.submit(jobs)
        except Exception as exc:  # noqa: BLE001 -- mapped to its HTTP error
            raise self.failure(exc) from None

    def failure(self, exc: BaseException) -> ApiError:
        return engine_failure(exc, self.settings.request_timeout_s, self.settings.retry_after_s)

    async def run(self, jobs: list[Job], disconnected: Callable[[], Awaitable[bool]] | None = None) -> list:
        """Every job's result, in order; abandons them all when one fails, times out or the client leaves.

        `disconnected` (e.g. Starlette's `request.is_disconnected`) is polled every `DISCONNECT_POLL_S` while
        the rows run: a client that closed its connection has its rows leave the batch at the next step."""
        futures = await self.submit(jobs)
        waiting = asyncio.ensure_future(asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))
        try:
            deadline = time.monotonic() + self.settings.request_timeout_s
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                done, _ = await asyncio.wait({waiting}, timeout=min(left, DISCONNECT_POLL_S))
                if done:
                    return waiting.result()
                if disconnected is not None and await disconnected():
                    raise ApiError(499, "the client closed its connection; its rows left the batch.",
                                   "client_closed_request")  # nginx's 499: nobody reads it, the metrics count it
        except BaseException as exc:
            waiting.cancel()
            for job in jobs:  # nothing keeps computing for this request
                job.abandon()
            if isinstance(exc, Exception):
                raise self.failure(exc) from None
            raise

    # ------------------------------------------------------------------------------------------ answers
    async def complete(self, plan: GenerationPlan,
                       disconnected: Callable[[], Awaitable[bool]] | None = None) -> CompletionResponse:
        """The whole completion (`stream: false`); `disconnected` as in `run`."""
        results = await self.run(self.jobs(plan), disconnected)
        choices = [self.choice(plan, i, result) for i, result in enumerate(results)]
        return CompletionResponse(id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()), model=plan.model,
                                  choices=choices, usage=self.usage(plan, results))

    def choice(self, plan: GenerationPlan, index: int, result) -> CompletionChoice:
        """Choice `index` of `plan` from its engine `Completion`: text cut at a stop string, log-probabilities."""
        text, cut = cut_at_stop(self.codec.decode(result.token_ids), plan.stop)
        finish: FinishReason = "stop" if cut else result.finish_reason
        prompt = plan.prompts[index // plan.n]
        head = ""
        if plan.echo:
            sent = plan.prompt_texts[index // plan.n]
            head = sent if sent is not None else self.codec.decode(prompt)
        logprobs = None
        if plan.logprobs is not None or plan.echo:
            ids, entries = [], []
            if plan.echo:
                ids, entries = list(prompt), list(result.prompt_logprobs or [None] * len(prompt))
            generated = list(result.logprobs or [])
            tokens = (result.token_ids + ([self.codec.eos] if result.finished else []))[: len(generated)]
            ids, entries = ids + tokens, entries + generated
            prompt_text = self.codec.decode(prompt) if plan.echo else ""
            logprobs = completion_logprobs(self.codec, ids, entries, limit=len(prompt_text) + len(text))
            if plan.logprobs is None:  # echo alone: no log-probabilities asked for, OpenAI's null
                logprobs = None
        return CompletionChoice(text=head + text, index=index, logprobs=logprobs, finish_reason=finish)

    def usage(self, plan: GenerationPlan, results) -> Usage:
        prompt_tokens = sum(map(len, plan.prompts))
        completion_tokens = sum(r.num_tokens for r in results)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)

    async def stream(self, plan: GenerationPlan) -> AsyncIterator[Delta]:
        """`stream: true`: submits the rows (a refusal raises here, before anything is sent), then returns the
        iterator of `Delta`s: a delta per choice whenever its text grew (every decoding step under continuous
        batching), never past a stop string, the finish reason on each choice's last, and with
        `include_usage` a last usage delta. An error after the stream started raises `ApiError` from it."""
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        jobs = self.jobs(plan)

        def post(i: int, tokens: list[int] | None) -> None:
            loop.call_soon_threadsafe(updates.put_nowait, (i, tokens))

        for i, job in enumerate(jobs):
            job.on_tokens = _poster(post, i)
        futures = await self.submit(jobs)
        for i, f in enumerate(futures):
            f.add_done_callback(lambda _, i=i: post(i, None))
        return self._deltas(plan, jobs, futures, updates)

    async def _deltas(self, plan, jobs, futures, updates: asyncio.Queue) -> AsyncIterator[Delta]:
        texts = [TextStream(self.codec, plan.stop) for _ in jobs]
        left, results = len(jobs), [None] * len(jobs)
        deadline = time.monotonic() + self.settings.request_timeout_s
        try:
            while left:
                try:
                    i, tokens = await asyncio.wait_for(updates.get(), max(0.0, deadline - time.monotonic()))
                except (TimeoutError, asyncio.TimeoutError):
                    raise self.failure(TimeoutError()) from None
                if tokens is None:  # the row is done
                    left -= 1
                    if futures[i].cancelled():
                        raise self.failure(TimeoutError())
                    if futures[i].exception() is not None:
                        raise self.failure(futures[i].exception())
                    result = results[i] = futures[i].result()
                    rest = texts[i].finish(result.token_ids)
                    cut = texts[i].stopped or cut_at_stop(self.codec.decode(result.token_ids), plan.stop)[1]
                    yield Delta(i, rest, "stop" if cut else result.finish_reason)
                    continue
                # every update, in order, even when the row has finished meanwhile: the queue holds a row's token
                # updates before its done mark, so a fast engine still streams step by step
                delta = texts[i].update(tokens)
                if delta:
                    yield Delta(i, delta)
            if plan.include_usage:
                yield Delta(-1, "", usage=self.usage(plan, results))
        finally:
            for job in jobs:
                if not job.future.done():
                    job.abandon()


def _poster(post: Callable[[int, list[int] | None], None], i: int) -> Callable[[list[int]], None]:
    return lambda tokens: post(i, tokens)


def unexpected(exc: Exception) -> ApiError:
    """A failure with no HTTP meaning of its own, inside a started stream."""
    return ApiError(500, one_line(f"{type(exc).__name__}: {exc}"), "server_error")


__all__ = ["CompletionService", "Delta", "unexpected"]

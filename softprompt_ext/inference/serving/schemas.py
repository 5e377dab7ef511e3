"""Request and response bodies of `softprompt serve` (pydantic models; FastAPI validates against them).

`/v1/completions` follows OpenAI's legacy completion schema (`model`, `prompt`, `max_tokens`, `temperature`,
`stop`, `logprobs`, `echo`, ...; `choices[i].text`, `logprobs`, `finish_reason`, `usage`), so the `openai`
client and tools built on it work unchanged. `model` is the adapter name. Request bodies forbid fields they
do not define (a 422 naming the field): nothing a client sends is silently ignored. The types are checked
here; every bound (ranges, limits, what a base model cannot do) is checked in `validation.py`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .sampling import FinishReason


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _texts(value: str | list[str], field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise ValueError(f"{field} is an empty list; pass a string or a non-empty list of strings")
    return texts


class StreamOptions(_Strict):
    include_usage: bool | None = False


Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(_Strict):
    """OpenAI's completion request; `top_k` is an extension (as vLLM's). Omitted sampling fields mean greedy
    decoding (`temperature` 0), the deterministic default of a server for evaluation."""

    model: str = Field(description="adapter name (see GET /v1/models)")
    prompt: Prompt
    suffix: str | None = None
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int | None = None
    best_of: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = None
    echo: bool | None = False
    stop: str | list[str] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: int | None = None
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        if isinstance(value, list) and not value:
            raise ValueError("prompt is an empty list; pass a string, a list of strings, or token ids")
        if isinstance(value, list) and any(isinstance(x, list) and not x for x in value):
            raise ValueError("prompt holds an empty list of token ids; pass at least one token per prompt")
        return value


class CompletionLogprobs(BaseModel):
    """OpenAI's completion log-probabilities: per token its text, log-probability (None for the first echoed
    prompt token), top alternatives (text -> log-probability) and character offset in the choice's text."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason


class StreamChoice(BaseModel):
    """One choice of a streamed chunk: the text added since the previous chunk; `finish_reason` on its last."""

    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChunk(BaseModel):
    """One server-sent event of a `stream: true` completion (OpenAI's streamed `text_completion`); with
    `stream_options.include_usage`, every chunk has `usage: null` and a last chunk with no choices has it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[StreamChoice]
    usage: Usage | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ClassifyRequest(_Strict):
    model: str = Field(description="adapter name (see GET /v1/models)")
    input: str | list[str]
    labels: list[str] = Field(min_length=1, description="candidate label strings, shared by every input")
    length_normalize: bool = False
    append_eos: bool = Field(True, description="encoder-decoder bases: score each label's tokens + EOS (T5's "
                             "text-to-text targets end in EOS); false scores the label's own tokens only, as "
                             "lm-eval's seq2seq log-likelihood does; ignored by decoder-only bases")

    @field_validator("input")
    @classmethod
    def _input(cls, value):
        _texts(value, "input")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value):
        for i, label in enumerate(value):
            if not label.strip():
                raise ValueError(f"labels[{i}]={label!r} is empty; pass non-empty label strings")
        return value

    @property
    def texts(self) -> list[str]:
        return _texts(self.input, "input")


class Classification(BaseModel):
    index: int
    label: str
    scores: list[float] = Field(description="summed log-likelihood of each label, in the order given")


class ClassifyResponse(BaseModel):
    object: Literal["classification"] = "classification"
    model: str
    data: list[Classification]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "softprompt-ext"
    source: str | None = None  # admin answers only: GET /v1/models shows no filesystem path
    num_virtual_tokens: int
    loaded: bool


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AdapterLoadRequest(_Strict):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
    source: str = Field(min_length=1, description="adapter directory or Hub repo id")
    subfolder: str | None = None
    revision: str | None = None

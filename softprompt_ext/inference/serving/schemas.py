"""Request and response bodies of `softprompt serve` (pydantic models; FastAPI validates against them).

`/v1/completions` follows OpenAI's legacy completion schema (`model`, `prompt`, `max_tokens`, `temperature`;
`choices[i].text`, `finish_reason`, `usage`), so the `openai` client and tools built on it work unchanged.
`model` is the adapter name. Only greedy decoding is served (`temperature` 0, `n` 1, `top_p` 1): a
request asking for sampling is refused with a 422 naming the field, never silently decoded greedily.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _texts(value: str | list[str], field: str) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise ValueError(f"{field} is an empty list; pass a string or a non-empty list of strings")
    return texts


class CompletionRequest(_Strict):
    model: str = Field(description="adapter name (see GET /v1/models)")
    prompt: str | list[str]
    max_tokens: int = Field(16, ge=1)
    temperature: float | None = 0.0
    top_p: float | None = 1.0
    n: int | None = 1
    stream: bool | None = False
    echo: bool | None = False
    user: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value):
        _texts(value, "prompt")
        return value

    @field_validator("temperature")
    @classmethod
    def _greedy(cls, value):
        if value not in (None, 0, 0.0):
            raise ValueError(f"temperature={value} is not served: only greedy decoding (temperature 0)")
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value):
        if value not in (None, 1, 1.0):
            raise ValueError(f"top_p={value} is not served: only greedy decoding (top_p 1)")
        return value

    @field_validator("n")
    @classmethod
    def _n(cls, value):
        if value not in (None, 1):
            raise ValueError(f"n={value} is not served: greedy decoding gives one completion per prompt (n 1)")
        return value

    @field_validator("echo")
    @classmethod
    def _echo(cls, value):
        if value:
            raise ValueError("echo=true is not served; omit it or pass false")
        return value

    @property
    def texts(self) -> list[str]:
        return _texts(self.prompt, "prompt")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"]


class StreamChoice(BaseModel):
    """One choice of a streamed chunk: the text added since the previous chunk; `finish_reason` on its last."""

    text: str
    index: int
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class CompletionChunk(BaseModel):
    """One server-sent event of a `stream: true` completion (OpenAI's streamed `text_completion`)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[StreamChoice]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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
    source: str
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

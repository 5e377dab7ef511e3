"""The tokenizer endpoints (vLLM's names and fields, which lm-eval's remote tokenizer calls): `POST /tokenize`,
`POST /detokenize`, `GET /tokenizer_info`. Token ids from `/tokenize` are what `/v1/completions` takes as a
prompt (`add_special_tokens` false: exactly the text's tokens)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict

from .errors import ApiError
from .limits import check_unicode

router = APIRouter()


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]


def _service(request: Request, model: str | None):
    service = request.app.state.service
    if model is not None:  # every adapter shares the base model's tokenizer; an unknown name is still an error
        service.known(model)
    return service


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, request: Request):
    service = _service(request, body.model)
    if len(body.prompt) > service.settings.max_input_chars:
        raise ApiError(400, f"prompt has {len(body.prompt)} characters, more than this server's limit of "
                       f"{service.settings.max_input_chars} (--max-input-chars); shorten it.", param="prompt")
    check_unicode(body.prompt, "prompt")
    encoded = await asyncio.to_thread(service.codec.tokenizer, body.prompt, add_special_tokens=body.add_special_tokens)
    ids = list(encoded["input_ids"])
    return {"count": len(ids), "max_model_len": service.settings.max_input_tokens, "tokens": ids,
            "token_strs": None}


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, request: Request):
    service = _service(request, body.model)
    if len(body.tokens) > service.settings.max_input_tokens + service.settings.max_tokens:
        raise ApiError(400, f"tokens holds {len(body.tokens)} ids, more than a prompt and its completion may "
                       "(--max-input-tokens + --max-tokens).", param="tokens")
    bad = [t for t in body.tokens if not 0 <= t < service.caps.vocab_size]
    if bad:
        raise ApiError(400, f"tokens holds id {bad[0]}, outside the vocabulary (0 to {service.caps.vocab_size - 1}).",
                       param="tokens")
    return {"prompt": service.codec.tokenizer.decode(body.tokens)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request):
    service = request.app.state.service
    tokenizer = service.codec.tokenizer
    return {"tokenizer_class": type(tokenizer).__name__, "eos_token": tokenizer.eos_token,
            "bos_token": tokenizer.bos_token, "pad_token": tokenizer.pad_token, "unk_token": tokenizer.unk_token,
            "chat_template": getattr(tokenizer, "chat_template", None), "vocab_size": service.caps.vocab_size,
            "model_max_length": service.settings.max_input_tokens,
            "is_encoder_decoder": service.caps.encoder_decoder}

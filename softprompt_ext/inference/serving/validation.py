"""Every bound of a generation request, checked in one place before anything is queued (as TGI's
`validation.rs`): a request either becomes a `GenerationPlan` the service can run, or an `ApiError` (HTTP 400,
or 404 for an unknown adapter) whose message names the field, the value and the fix, and whose `param` is the
field.

Order: the cheap checks on the parsed body first (ranges, counts, what the base model or batching mode cannot
do), then tokenisation and the checks that need tokens (prompt lengths, token ids in the vocabulary, logit
bias ids). Checks on the raw body belong before `tokenize`: its size and read time in `limits.BodyLimit`
(before parsing), characters, list lengths, label counts and valid Unicode in `check_cheap` /
`check_prompt_sizes` / `plan_classify`. The routes run the tokenising half in a worker thread, off the event
loop.

Chat requests are validated here too: `plan_chat` renders the messages with the tokenizer's chat template and
reuses the completion checks.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError
from .limits import check_unicode
from .sampling import RowOptions
from .settings import ServeSettings
from .tokens import TextCodec

MAX_LOGPROBS = 5  # OpenAI's bound on `logprobs`
MAX_STOP = 4  # OpenAI's bound on the number of stop strings
LOGIT_BIAS_RANGE = 100.0  # OpenAI's bound on a logit bias value
PENALTY_RANGE = 2.0  # OpenAI's bound on presence/frequency penalties
TEMPERATURE_MAX = 2.0  # OpenAI's bound on temperature


@dataclass
class Capabilities:
    """What the served base model and engine can do (the checks that depend on them)."""

    encoder_decoder: bool
    batching: str
    vocab_size: int

    @classmethod
    def of(cls, backend) -> Capabilities:
        codec = backend.codec
        return cls(encoder_decoder=codec.encoder_decoder, batching=backend.batching, vocab_size=len(codec.tokenizer))


@dataclass
class GenerationPlan:
    """A validated generation request: its prompts as token ids, and each choice's options.

    `prompts[i]` is the token ids of prompt i; choice `i * n + j` is prompt i's j-th completion, decoded with
    `options[j]` (the same options but the seed, `seed + j`, so that a seeded prompt gives the same choices
    alone or in a list).
    """

    model: str
    prompts: list[list[int]]
    prompt_texts: list[str | None]  # the text sent (None: sent as token ids)
    max_tokens: int
    n: int
    options: list[RowOptions]
    stream: bool = False
    include_usage: bool = False
    logprobs: int | None = None
    echo: bool = False
    stop: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return len(self.prompts) * self.n


def _bad(param: str, message: str, status: int = 400) -> ApiError:
    return ApiError(status, message, "invalid_request_error", param=param)


def check_prompt_sizes(prompt, settings: ServeSettings, param: str = "prompt", copies: int = 1) -> None:
    """What a prompt (a string, strings, token ids or lists of them) may hold, checked before tokenising: valid
    Unicode, at most `--max-input-chars` characters per string, `--max-input-tokens` ids per id list, and at
    most `--max-queue` rows (`copies` per prompt) in all."""
    rows = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else list(prompt)
    if len(rows) * copies > settings.max_queue:
        raise _bad(param, f"the request holds {len(rows) * copies} prompts (counting each of n completions), more "
                   f"than this server queues at once ({settings.max_queue}, --max-queue); split it.")
    for i, row in enumerate(rows):
        where = param if len(rows) == 1 else f"{param}[{i}]"
        if isinstance(row, str):
            if len(row) > settings.max_input_chars:
                raise _bad(param, f"{where} has {len(row)} characters, more than this server's limit of "
                           f"{settings.max_input_chars} (--max-input-chars); shorten it.")
            check_unicode(row, where)
        elif len(row) > settings.max_input_tokens:
            raise _bad(param, f"{where} has {len(row)} tokens, more than this server's limit of "
                       f"{settings.max_input_tokens} (--max-input-tokens); shorten it.")


def check_cheap(body, settings: ServeSettings, caps: Capabilities) -> None:
    """The bounds that need no tokens (`body` is a `CompletionRequest`)."""
    check_unicode(body.model, "model")
    check_unicode(body.stop, "stop")
    check_prompt_sizes(body.prompt, settings, copies=max(1, body.n or 1))
    if body.suffix:
        raise _bad("suffix", f"suffix={body.suffix!r} is not served: the server completes a prompt, it does not "
                   "insert text between a prompt and a suffix; omit suffix.")
    n = 1 if body.n is None else body.n
    if not 1 <= n <= settings.max_n:
        raise _bad("n", f"n={n} is out of range: 1 to {settings.max_n} (--max-n) completions per prompt.")
    if body.best_of is not None and body.best_of != n:
        raise _bad("best_of", f"best_of={body.best_of} differs from n={n}: the server returns every completion "
                   "it generates (best_of = n); pass best_of equal to n or omit it.")
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    if max_tokens > settings.max_tokens:
        raise _bad("max_tokens", f"max_tokens={max_tokens} is more than this server's limit of "
                   f"{settings.max_tokens} (--max-tokens).")
    if max_tokens == 0 and not body.echo:
        raise _bad("max_tokens", "max_tokens=0 generates nothing; it is served with echo=true (score the prompt); "
                   "pass max_tokens >= 1 or echo=true.")
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_LOGPROBS:
        raise _bad("logprobs", f"logprobs={body.logprobs} is out of range: 0 to {MAX_LOGPROBS} alternatives per "
                   "token.")
    if body.echo and caps.encoder_decoder:
        raise _bad("echo", "echo=true is not served on an encoder-decoder base (T5): its prompt goes to the "
                   "encoder, which predicts no token of it, so the prompt has no log-probabilities to echo. Score "
                   "candidate answers with POST /v1/classify (rank classification), or serve a decoder-only base.")
    temperature = 0.0 if body.temperature is None else body.temperature
    if not 0 <= temperature <= TEMPERATURE_MAX:
        raise _bad("temperature", f"temperature={temperature} is out of range: 0 (greedy) to {TEMPERATURE_MAX:g}.")
    top_p = 1.0 if body.top_p is None else body.top_p
    if not 0 < top_p <= 1:
        raise _bad("top_p", f"top_p={top_p} is out of range: more than 0, at most 1 (1: no nucleus cut).")
    top_k = 0 if body.top_k is None or body.top_k == -1 else body.top_k
    if top_k < 0:
        raise _bad("top_k", f"top_k={body.top_k} is out of range: 0 or -1 (off), or the number of tokens kept.")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name) or 0.0
        if not -PENALTY_RANGE <= value <= PENALTY_RANGE:
            raise _bad(name, f"{name}={value} is out of range: -{PENALTY_RANGE:g} to {PENALTY_RANGE:g}.")
    for key, value in (body.logit_bias or {}).items():
        if not -LOGIT_BIAS_RANGE <= value <= LOGIT_BIAS_RANGE:
            raise _bad("logit_bias", f"logit_bias[{key!r}]={value} is out of range: -100 to 100.")
    stop_strings(body.stop)  # refuses too many or empty ones
    if body.stream and (body.logprobs is not None or body.echo):
        field_name = "logprobs" if body.logprobs is not None else "echo"
        raise _bad(field_name, f"{field_name} with stream=true is not served; request them without streaming.")
    if body.stream_options is not None and not body.stream:
        raise _bad("stream_options", "stream_options is only for stream=true; omit it or stream.")
    continuous_only = [name for name in ("seed", "echo", "stop", "logit_bias", "presence_penalty", "frequency_penalty")
                       if getattr(body, name) not in (None, False, 0, 0.0, {}, [], "")
                       and (name != "seed" or temperature > 0)]  # greedy decoding has no use for a seed
    if continuous_only and caps.batching != "continuous":
        name = continuous_only[0]
        raise _bad(name, f"{name} needs continuous batching (per-row options inside the running batch); this "
                   f"server runs --batching {caps.batching.replace('_', '-')}, whose generate calls take one setting "
                   "per batch. Restart it with --batching continuous, or omit the field.")


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """The stop strings of a request's `stop` (a string or up to 4), refused when empty or too many."""
    if stop is None:
        return ()
    strings = [stop] if isinstance(stop, str) else list(stop)
    if len(strings) > MAX_STOP:
        raise _bad("stop", f"stop holds {len(strings)} strings, more than {MAX_STOP}; pass at most {MAX_STOP}.")
    for i, s in enumerate(strings):
        if not s:
            raise _bad("stop", f"stop[{i}] is empty; every stop string needs at least one character.")
    return tuple(strings)


def tokenize(prompt, codec: TextCodec, settings: ServeSettings, caps: Capabilities,
             param: str = "prompt") -> tuple[list[list[int]], list[str | None]]:
    """`(token ids, texts)` of a prompt given as a string, strings, token ids or lists of token ids; each
    within `--max-input-tokens` and, as ids, within the vocabulary. Texts get the tokenizer's special tokens
    (as the model reads inputs); token ids are taken as they are."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and isinstance(prompt[0], int):
        prompt = [prompt]
    texts: list[str | None] = [p if isinstance(p, str) else None for p in prompt]
    strings = [p for p in prompt if isinstance(p, str)]
    encoded = iter(codec.encode(strings)) if strings else iter(())
    ids = [next(encoded) if isinstance(p, str) else list(p) for p in prompt]
    for i, row in enumerate(ids):
        where = param if len(ids) == 1 else f"{param}[{i}]"
        if len(row) > settings.max_input_tokens:
            raise _bad(param, f"{where} has {len(row)} tokens, more than this server's limit of "
                       f"{settings.max_input_tokens} (--max-input-tokens); shorten it.")
        bad = [t for t in row if not 0 <= t < caps.vocab_size]
        if bad:
            raise _bad(param, f"{where} holds token id {bad[0]}, outside the vocabulary (0 to "
                       f"{caps.vocab_size - 1}); pass ids of this base model's tokenizer (POST /tokenize).")
    return ids, texts


def plan_classify(body, settings: ServeSettings, codec: TextCodec,
                  caps: Capabilities) -> tuple[list[list[int]], list[list[int]]]:
    """`(input ids, label ids)` of a `ClassifyRequest`: label count, characters and Unicode checked before
    tokenising, then each label's tokens within `--max-input-tokens` (as an input's)."""
    check_unicode(body.model, "model")
    labels = body.labels
    if len(labels) > settings.max_labels:
        raise _bad("labels", f"labels holds {len(labels)} labels, more than this server's limit of "
                   f"{settings.max_labels} (--max-labels); rank them in several requests.")
    for i, label in enumerate(labels):
        if len(label) > settings.max_input_chars:
            raise _bad("labels", f"labels[{i}] has {len(label)} characters, more than this server's limit of "
                       f"{settings.max_input_chars} (--max-input-chars); shorten it.")
        check_unicode(label, f"labels[{i}]")
    check_prompt_sizes(body.texts, settings, param="input")
    try:
        label_ids = codec.encode_labels(labels, append_eos=body.append_eos)
    except ValueError as exc:
        raise _bad("labels", str(exc), status=422) from None
    for i, ids in enumerate(label_ids):
        if len(ids) > settings.max_input_tokens:
            raise _bad("labels", f"labels[{i}] has {len(ids)} tokens, more than this server's limit of "
                       f"{settings.max_input_tokens} (--max-input-tokens); shorten it.")
    inputs, _ = tokenize(body.texts, codec, settings, caps, param="input")
    return inputs, label_ids


def logit_bias(bias: dict[str, float] | None, caps: Capabilities) -> tuple[tuple[int, float], ...]:
    """`((token id, bias), ...)` of a request's `logit_bias` (keys are token ids as strings)."""
    out = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except ValueError:
            raise _bad("logit_bias", f"logit_bias key {key!r} is not a token id; keys are token ids as strings "
                       "(POST /tokenize).") from None
        if not 0 <= token < caps.vocab_size:
            raise _bad("logit_bias", f"logit_bias key {key!r} is outside the vocabulary (0 to "
                       f"{caps.vocab_size - 1}).")
        out.append((token, float(value)))
    return tuple(out)


def plan_completion(body, settings: ServeSettings, codec: TextCodec, caps: Capabilities) -> GenerationPlan:
    """The `GenerationPlan` of a `CompletionRequest`, or the `ApiError` naming what is wrong with it."""
    check_cheap(body, settings, caps)
    prompts, texts = tokenize(body.prompt, codec, settings, caps)
    return _plan(body, prompts, texts, settings, caps)


def _plan(body, prompts, texts, settings: ServeSettings, caps: Capabilities) -> GenerationPlan:
    n = body.n or 1
    stop = stop_strings(body.stop)
    base = dict(temperature=body.temperature or 0.0, top_p=1.0 if body.top_p is None else body.top_p,
                top_k=0 if body.top_k in (None, -1) else body.top_k,
                presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
                logit_bias=logit_bias(body.logit_bias, caps), logprobs=body.logprobs, echo=bool(body.echo),
                stop=stop)
    options = [RowOptions(seed=None if body.seed is None else body.seed + j, **base) for j in range(n)]
    if len(prompts) * n > settings.max_queue:
        raise _bad("prompt", f"the request holds {len(prompts) * n} prompts (counting each of n completions), more "
                   f"than this server queues at once ({settings.max_queue}, --max-queue); split it.")
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return GenerationPlan(model=body.model, prompts=prompts, prompt_texts=texts,
                          max_tokens=16 if body.max_tokens is None else body.max_tokens, n=n, options=options,
                          stream=bool(body.stream), include_usage=include_usage, logprobs=body.logprobs,
                          echo=bool(body.echo), stop=stop)


__all__ = ["Capabilities", "GenerationPlan", "MAX_LOGPROBS", "MAX_STOP", "check_cheap", "logit_bias",
           "check_prompt_sizes", "plan_classify", "plan_completion", "stop_strings", "tokenize"]

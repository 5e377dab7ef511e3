"""Iteration-level greedy decoding for `softprompt serve`: rows join and leave a running batch between steps.

A batch-at-a-time server runs every row of a batch until its longest row is done, and a request that arrives
meanwhile waits for the whole batch. Here the worker keeps one *running batch*: before every decoding step
it admits whatever is queued (prefill: the new rows' prompts and inputs, in one mixed call), and after the
step it answers every row that produced EOS or its `max_new_tokens` and drops it from the batch. Each row
carries its own soft prompt (Lester et al. 2021, section 6), so one step mixes any adapters.

How rows of different ages share one cache, and why each row still computes exactly what it computes alone:

* Decoder-only (Llama, GPT-2): the cache of row i is `[pad...; prompt_i; pad...; tokens_i]` along the key
  axis, pad keys masked (`attention_mask` 0). Position ids count real positions only (0..P_i-1 for the
  prompt, P_i.. for the tokens), so rotary and absolute positions are those of the row alone. A row that
  joins later is left-padded to the batch's key length.
* **Prefix cache** (decoder-only): the prompt's keys and values do not depend on the tokens after it (causal
  attention), so they are computed once per adapter (`PrefixCache`) and copied in front of every new row of
  that adapter: prefill then runs the T input tokens only, not P + T positions.
* Encoder-decoder (T5): a new row's encoder input is `[prompt_i; tokens_i]` (the mixed placement), run once at
  prefill; its cross-attention keys and values are right-padded to the batch's encoder length and masked. The
  decoder self-attention cache is left-padded: T5's relative position bias depends only on the distance
  between two positions, which a common left shift leaves unchanged, and pad keys are masked.
* Pad keys and values are zeros (finite), so a masked position contributes exactly 0.

Greedy decoding takes the argmax of the last position's logits, as `generate` does for a generation config
without logits processors (`logits_processors_in`; `Engine` falls back to batch mode when the model's
generation config has any).
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, EncoderDecoderCache

from ...peft_internals import prompt_weight
from ...placement import loaded_prompts, place_prompts
from .sampling import RowOptions, TokenLogprob, choose, top_entries

# Generation-config fields that make `generate` differ from the argmax of the logits (logits processors).
_PROCESSOR_FIELDS = {
    "repetition_penalty": (None, 1.0), "encoder_repetition_penalty": (None, 1.0), "no_repeat_ngram_size": (None, 0),
    "encoder_no_repeat_ngram_size": (None, 0), "bad_words_ids": (None,), "min_length": (None, 0),
    "min_new_tokens": (None, 0), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
    "suppress_tokens": (None,), "begin_suppress_tokens": (None,), "sequence_bias": (None,),
    "exponential_decay_length_penalty": (None,), "diversity_penalty": (None, 0.0),
}


def logits_processors_in(generation_config) -> list[str]:
    """The fields of `generation_config` that add a logits processor to greedy `generate` (empty: greedy is the
    plain argmax, which `RunningBatch` computes)."""
    if generation_config is None:
        return []
    return [f"{name}={getattr(generation_config, name)!r}" for name, plain in _PROCESSOR_FIELDS.items()
            if getattr(generation_config, name, None) not in plain]


@dataclass
class Row:
    """One request row in the running batch: its job, the tokens generated so far, its budget, its options
    (`sampling.RowOptions`; None: greedy) and what they ask for: its generator, the log-probabilities of its
    tokens and, with `echo`, of its input's tokens (the first one None)."""

    job: Any
    adapter: str
    max_new_tokens: int
    tokens: list[int] = field(default_factory=list)
    options: RowOptions | None = None
    generator: torch.Generator | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    stopped: bool = False  # ended by one of its stop strings


def _layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`[(keys, values)]` per layer of a `DynamicCache`, each `[B, heads, L, d_head]`."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def _dynamic(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    for i, (keys, values) in enumerate(layers):
        cache.update(keys, values, i)
    return cache


def _pad_keys(t: torch.Tensor, length: int, left: bool, like: torch.Tensor | None = None) -> torch.Tensor:
    """`[B, h, l, d]` zero-padded to `[B, h, length, d]` on the left (or right). An empty `t` (no columns yet:
    a seq2seq row that has not decoded) takes its head shape from `like`."""
    if t.shape[-2] == 0 and like is not None:
        t = like.new_zeros(t.shape[0], like.shape[1], 0, like.shape[-1])
    missing = length - t.shape[-2]
    if missing <= 0:
        return t
    pad = t.new_zeros(*t.shape[:-2], missing, t.shape[-1])
    return torch.cat((pad, t) if left else (t, pad), dim=-2)


def _pad_mask(m: torch.Tensor, length: int, left: bool) -> torch.Tensor:
    missing = length - m.shape[-1]
    if missing <= 0:
        return m
    pad = m.new_zeros(m.shape[0], missing)
    return torch.cat((pad, m) if left else (m, pad), dim=-1)


def _cat_layers(a, b, length: int, left: bool, like=None):
    """Rows of `a` then rows of `b`, every layer padded to `length` columns; `like`: per-layer `(K, V)` giving the
    head shape of an empty layer."""
    like = like or [(None, None)] * len(a)
    return [(torch.cat((_pad_keys(ka, length, left, lk), _pad_keys(kb, length, left, lk))),
             torch.cat((_pad_keys(va, length, left, lv), _pad_keys(vb, length, left, lv))))
            for (ka, va), (kb, vb), (lk, lv) in zip(a, b, like, strict=True)]


def _cross_keys_values(model, states: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """T5-family decoders: every layer's cross-attention keys and values `[b, h, S, d]` of encoder `states
    [b, S, H]`, as the decoder's first step computes them; None for another architecture."""
    try:
        attentions = [block.layer[1].EncDecAttention for block in model.get_decoder().block]
    except (AttributeError, IndexError, TypeError):
        return None
    out = []
    for attn in attentions:
        shape = (*states.shape[:-1], -1, attn.key_value_proj_dim)
        out.append((attn.k(states).view(shape).transpose(1, 2), attn.v(states).view(shape).transpose(1, 2)))
    return out


def _cache_kwarg(model) -> str:
    """The name the model's forward takes its cache under ("cache" from transformers 5.24, else
    "past_key_values")."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def _out_cache(out):
    """The cache a forward returned (`out.cache` from transformers 5.24, `out.past_key_values` before)."""
    cache = out.get("cache") if "cache" in out else None
    return cache if cache is not None else out["past_key_values"]


class PrefixCache:
    """Decoder-only: the keys and values of every adapter's prompt, computed once (per layer `[1, h, P, d]`).

    Entries are keyed by adapter name and checked against the prompt parameter they were computed from (the
    same object, unchanged in place), so an adapter reloaded under the same name is recomputed; `drop(name)`
    forgets one (the registry calls it when it evicts or unloads an adapter). Memory per adapter:
    layers x 2 x P x d_model values, in the model's dtype.
    """

    def __init__(self, model):
        self.model = model
        self._entries: dict[str, tuple[Any, int, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() * 2 for *_, layers in list(self._entries.values()) for k, _ in layers)

    def drop(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str, prompt: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        weight = prompt_weight(self.model, name)
        entry = self._entries.get(name)
        if entry is not None and entry[0]() is weight and entry[1] == weight._version:
            self.hits += 1
            return entry[2]
        self.misses += 1
        base = self.model.get_base_model()
        embeds = prompt.to(next(base.parameters()).dtype)[None]  # [1, P, H]
        positions = torch.arange(prompt.shape[0], device=prompt.device)[None]  # [1, P]
        out = base(inputs_embeds=embeds, position_ids=positions, use_cache=True, logits_to_keep=1)
        layers = [(k.detach(), v.detach()) for k, v in _layers(_out_cache(out))]
        self._entries[name] = (weakref.ref(weight), weight._version, layers)
        return layers


class RunningBatch:
    """The rows being decoded together and their cache. Worker thread only.

    `admit(rows, input_ids)` prefills new rows (one model call for all of them) and merges them in;
    `step()` runs one decoding step for every row and returns the rows that finished, with their tokens.
    """

    def __init__(self, model, *, eos_token_id: int, pad_token_id: int, encoder_decoder: bool,
                 prefix_cache: PrefixCache | None = None, stops: Callable[[Row], bool] | None = None):
        self.model = model
        self.stops = stops  # `stops(row)`: True when the row's text reached one of its stop strings
        self.base = model.get_base_model()
        self.eos, self.pad = eos_token_id, pad_token_id
        self.encoder_decoder = encoder_decoder
        self.prefix_cache = prefix_cache
        self.cache_kwarg = _cache_kwarg(self.base)
        self.rows: list[Row] = []
        self.next_ids: torch.Tensor | None = None  # [B] the token each row feeds next
        # decoder-only: layers [(K, V)] [B, h, L, d], mask [B, L], positions [B] (the next position id)
        # seq2seq: self layers [B, h, t, d] + self mask [B, t]; cross layers [B, h, S, d] + enc mask [B, S];
        #          encoder states [B, S, H]
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.mask: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.cross: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.enc_mask: torch.Tensor | None = None
        self.enc_states: torch.Tensor | None = None
        # The transformers cache object of the current rows, kept across steps (the forward extends it in
        # place); rebuilt from `layers` / `cross` only when rows join or leave (building one copies every tensor).
        self._cache: Any = None

    def __len__(self) -> int:
        return len(self.rows)

    def remove(self, rows: list[Row]) -> None:
        """Drop `rows` (their clients gave up) from the batch."""
        gone = {id(row) for row in rows}
        keep = [i for i, row in enumerate(self.rows) if id(row) not in gone]
        if len(keep) < len(self.rows):
            self._select(keep)

    # ------------------------------------------------------------------------------------------ prefill
    def admit(self, rows: list[Row], inputs: list[list[int]]) -> list[Row]:
        """Prefill `rows` (token ids `inputs`), merge them in; returns the rows already finished (a first
        token that is EOS, or `max_new_tokens` 1)."""
        device = next(self.base.parameters()).device
        width = max(len(ids) for ids in inputs)
        for row in rows:
            if row.options is not None and row.generator is None:
                row.generator = row.options.generator(device)
        if self.encoder_decoder:
            ids = torch.full((len(rows), width), self.pad, dtype=torch.long, device=device)  # [b, T] right-padded
            mask = torch.zeros_like(ids)
            for i, row_ids in enumerate(inputs):
                ids[i, : len(row_ids)] = torch.tensor(row_ids, device=device)
                mask[i, : len(row_ids)] = 1
            first, feed, state = self._prefill_seq2seq(ids, mask, rows)
        else:
            first, state = self._prefill_causal(inputs, rows, device)
            feed = first
        self._merge(state)
        self.rows.extend(rows)
        assert feed is not None
        self.next_ids = feed if self.next_ids is None else torch.cat((self.next_ids, feed))
        if first is None:  # seq2seq: the first token comes from the next step
            return []
        return self._record(first, start=len(self.rows) - len(rows))

    def _prefill_seq2seq(self, ids, mask, rows):
        names = [row.adapter for row in rows]
        placed = place_prompts(self.model, ids, mask, names)
        encoder = self.base.get_encoder()
        states = encoder(inputs_embeds=placed.embeds, attention_mask=placed.mask).last_hidden_state  # [b, S, H]
        b = ids.shape[0]
        start = torch.full((b,), self.base.config.decoder_start_token_id, dtype=torch.long, device=ids.device)
        cross = _cross_keys_values(self.base, states)
        if cross is not None:
            # The rows start decoding in the next shared step: no decoder call here, an empty self-attention
            # cache (0 columns), the start token as the next input.
            empty = states.new_zeros(b, 0, 0, 0)
            state = dict(layers=[(empty, empty)] * len(cross), mask=mask.new_zeros(b, 0), cross=cross,
                         enc_mask=placed.mask, enc_states=states)
            return None, start, state
        out = self.base(encoder_outputs=(states,), attention_mask=placed.mask, decoder_input_ids=start[:, None],
                        use_cache=True)
        cache = _out_cache(out)
        state = dict(layers=_layers(cache.self_attention_cache), mask=mask.new_ones(b, 1),
                     cross=_layers(cache.cross_attention_cache), enc_mask=placed.mask, enc_states=states)
        return choose(out.logits[:, -1], rows), None, state

    def _prefill_causal(self, inputs, rows, device):
        names = [row.adapter for row in rows]
        echo = [row.options is not None and row.options.echo for row in rows]
        keep = max(len(ids) for ids in inputs) if any(echo) else 1  # echo: the logits of every input token
        prompts = loaded_prompts(self.model, names)
        b, width = len(inputs), max(len(ids) for ids in inputs)
        if self.prefix_cache is not None:
            prefixes = [self.prefix_cache.get(name, prompts[name]) for name in names]
            plen = [prompts[name].shape[0] for name in names]
            p_width = max(plen)
            layers = []
            for layer in range(len(prefixes[0])):
                keys = torch.cat([_pad_keys(p[layer][0], p_width, left=True) for p in prefixes])  # [b, h, Pmax, d]
                values = torch.cat([_pad_keys(p[layer][1], p_width, left=True) for p in prefixes])
                layers.append((keys, values))
            ids = torch.full((b, width), self.pad, dtype=torch.long, device=device)  # [b, T] left-padded
            prefix_mask = torch.zeros(b, p_width, dtype=torch.long, device=device)
            token_mask = torch.zeros(b, width, dtype=torch.long, device=device)
            positions = torch.ones(b, width, dtype=torch.long, device=device)
            for i, row_ids in enumerate(inputs):
                n = len(row_ids)
                ids[i, width - n:] = torch.tensor(row_ids, device=device)
                prefix_mask[i, p_width - plen[i]:] = 1
                token_mask[i, width - n:] = 1
                positions[i, width - n:] = torch.arange(plen[i], plen[i] + n, device=device)
            mask = torch.cat((prefix_mask, token_mask), dim=1)  # [b, Pmax + T]
            out = self.base(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                            logits_to_keep=keep, **{self.cache_kwarg: _dynamic(layers)})
            next_position = positions[:, -1] + 1
        else:  # no prefix cache: the prompt is prefilled with the row (the mixed placement, left padding)
            ids = torch.full((b, width), self.pad, dtype=torch.long, device=device)
            token_mask = torch.zeros_like(ids)
            for i, row_ids in enumerate(inputs):
                ids[i, width - len(row_ids):] = torch.tensor(row_ids, device=device)
                token_mask[i, width - len(row_ids):] = 1
            placed = place_prompts(self.model, ids, token_mask, names)
            mask = placed.mask
            out = self.base(inputs_embeds=placed.embeds, attention_mask=mask, position_ids=placed.positions,
                            use_cache=True, logits_to_keep=keep)
            next_position = placed.positions[:, -1] + 1
        state = dict(layers=_layers(_out_cache(out)), mask=mask, positions=next_position)
        if any(echo):
            _score_inputs(out.logits, inputs, rows)
        return choose(out.logits[:, -1], rows), state

    def _merge(self, state: dict) -> None:
        self._cache = None  # rows change: the next step builds a cache of the merged tensors
        if not self.rows:
            self.layers, self.mask = state["layers"], state["mask"]
            if self.encoder_decoder:
                self.cross, self.enc_mask, self.enc_states = state["cross"], state["enc_mask"], state["enc_states"]
            else:
                self.positions = state["positions"]
            return
        assert self.mask is not None
        length = max(self.mask.shape[1], state["mask"].shape[1])
        like = self.cross if self.encoder_decoder else None  # seq2seq self-attention heads = cross-attention heads
        self.layers = _cat_layers(self.layers, state["layers"], length, left=True, like=like)
        self.mask = torch.cat((_pad_mask(self.mask, length, True), _pad_mask(state["mask"], length, True)))
        if self.encoder_decoder:
            assert self.enc_mask is not None and self.enc_states is not None
            s = max(self.enc_mask.shape[1], state["enc_mask"].shape[1])
            self.cross = _cat_layers(self.cross, state["cross"], s, left=False)
            self.enc_mask = torch.cat((_pad_mask(self.enc_mask, s, False), _pad_mask(state["enc_mask"], s, False)))
            states = [self.enc_states, state["enc_states"]]
            self.enc_states = torch.cat([torch.nn.functional.pad(x, (0, 0, 0, s - x.shape[1])) for x in states])
        else:
            assert self.positions is not None
            self.positions = torch.cat((self.positions, state["positions"]))

    # ------------------------------------------------------------------------------------------ decoding
    def step(self) -> list[Row]:
        """One decoding step for every row (each with its own options); returns (and removes) the rows that finished."""
        assert self.next_ids is not None and self.mask is not None
        ids = self.next_ids[:, None]  # [B, 1]
        self.mask = torch.cat((self.mask, self.mask.new_ones(len(self.rows), 1)), dim=1)
        if self.encoder_decoder:
            if self._cache is None:
                started = [(k, v) for k, v in self.layers if k.shape[-2] > 0]
                self._cache = EncoderDecoderCache(_dynamic(started), _dynamic(self.cross))
            out = self.base(encoder_outputs=(self.enc_states,), attention_mask=self.enc_mask, decoder_input_ids=ids,
                            decoder_attention_mask=self.mask, use_cache=True, **{self.cache_kwarg: self._cache})
            self._cache = _out_cache(out)
            self.layers = _layers(self._cache.self_attention_cache)  # the cache's own tensors, not copies
        else:
            assert self.positions is not None
            if self._cache is None:
                self._cache = _dynamic(self.layers)
            out = self.base(input_ids=ids, attention_mask=self.mask, position_ids=self.positions[:, None],
                            use_cache=True, logits_to_keep=1, **{self.cache_kwarg: self._cache})
            self._cache = _out_cache(out)
            self.layers = _layers(self._cache)
            self.positions = self.positions + 1
        self.next_ids = choose(out.logits[:, -1], self.rows)
        return self._record(self.next_ids, start=0)

    def _record(self, tokens: torch.Tensor, start: int) -> list[Row]:
        """Append `tokens` to rows `start..`; remove and return the finished rows."""
        done: list[int] = []
        for offset, token in enumerate(tokens.tolist()):
            i = start + offset
            row = self.rows[i]
            if row.max_new_tokens > 0:  # 0: echo only, nothing generated
                row.tokens.append(token)
            if token != self.eos and self.stops is not None and row.options is not None and row.options.stop:
                row.stopped = self.stops(row)
            if token == self.eos or len(row.tokens) >= row.max_new_tokens or row.stopped:
                done.append(i)
        if not done:
            return []
        finished = [self.rows[i] for i in done]
        finished_at = set(done)
        keep = [i for i in range(len(self.rows)) if i not in finished_at]
        self._select(keep)
        return finished

    def _select(self, keep: list[int]) -> None:
        self._cache = None
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self.layers, self.cross, self.mask, self.positions = [], [], None, None
            self.enc_mask = self.enc_states = self.next_ids = None
            return
        assert self.mask is not None and self.next_ids is not None
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask[index]
        drop = int((mask.sum(0) == 0).long().cumprod(0).sum())  # leading columns that are padding for every row
        self.mask = mask[:, drop:]
        self.layers = [(k[index, :, drop:], v[index, :, drop:]) for k, v in self.layers]
        self.next_ids = self.next_ids[index]
        if self.encoder_decoder:
            assert self.enc_mask is not None and self.enc_states is not None
            enc_mask = self.enc_mask[index]
            width = int(enc_mask.sum(1).max())  # trailing encoder columns that are padding for every row
            self.enc_mask = enc_mask[:, :width]
            self.cross = [(k[index, :, :width], v[index, :, :width]) for k, v in self.cross]
            self.enc_states = self.enc_states[index, :width]
        else:
            assert self.positions is not None
            self.positions = self.positions[index]


def _score_inputs(logits: torch.Tensor, inputs: list[list[int]], rows: list[Row]) -> None:
    """`echo` rows: the log-probability (and top alternatives) of each input token given the prompt and the
    tokens before it, from the prefill's logits `[b, W, V]` (each row's tokens in its last columns); the first
    input token has none (OpenAI's `None`)."""
    width = logits.shape[1]
    for i, (row, ids) in enumerate(zip(rows, inputs, strict=True)):
        if row.options is None or not row.options.echo:
            continue
        logp = torch.log_softmax(logits[i, width - len(ids):].float(), -1)  # [n, V]: position j predicts j + 1
        k = row.options.logprobs or 0
        row.prompt_logprobs = [None] + [top_entries(logp[j - 1], ids[j], k) for j in range(1, len(ids))]

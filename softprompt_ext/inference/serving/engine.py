"""The model side of `softprompt serve`: the base model, its tokenizer, the adapter store, one batch runner.

`Engine.run(kind, jobs)` is the scheduler's runner: it makes the batch's adapters resident (LRU store) and
runs all rows in one call -- `mixed_generate` (greedy) for "generate" jobs and `score_label_ids` (each input
encoded once, every label scored on it) for "classify" jobs, each row with its own prompt (Lester et al.
2021, section 6). Greedy rows do not depend on each other, so a row's tokens equal the request run alone:
the batch generates up to the largest `max_new_tokens` and every row is cut to its own.

Batching modes (`--batching`):

* `"continuous"` (the default): iteration-level scheduling for generation (`decoding.RunningBatch`): the
  worker admits queued rows before every decoding step and answers each row as soon as it is done, so a
  request never waits for a batch's longest row; decoder-only bases reuse every adapter's prompt keys and
  values (`decoding.PrefixCache`). `admit` / `step` / `cancel` are the scheduler's calls.
  Used when the model's generation config makes greedy `generate` a plain argmax; with logits processors
  (e.g. `repetition_penalty`) the engine warns and uses `"mixed"`.
* `"mixed"`: one batch at a time through `mixed_generate`, any adapters in a batch.
* `"per_adapter"`: the baseline the serving benchmark compares against: the scheduler puts one adapter in
  each batch and generation goes through PEFT's own path (`set_adapter` + `generate`, or the corrected
  `softprompt_ext.generate` for decoder-only models).

Classification is one forward per batch in every mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from ...precision import autocast
from ..generate import generate as generate_active
from ..mixed_batches import mixed_generate
from ..scoring import score_label_ids
from .decoding import PrefixCache, Row, RunningBatch, logits_processors_in
from .registry import AdapterRegistry
from .sampling import FinishReason, TokenLogprob, top_entries
from .scheduler import Job
from .settings import BATCHING, DEFAULTS, ServeSettings
from .tokens import TextCodec

_log = logging.getLogger("softprompt_ext.serve")


@dataclass
class Completion:
    """One generated row: its token ids (EOS excluded), whether it stopped on EOS, the tokens generated; with
    a stop string, whether it ended on one; with `logprobs`, one `TokenLogprob` per generated token (EOS too); with
    `echo`, one per input token (the first None)."""

    token_ids: list[int]
    finished: bool
    num_tokens: int
    stopped: bool = False
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None

    @property
    def finish_reason(self) -> FinishReason:
        """OpenAI's: "stop" (EOS or a stop string) or "length"."""
        return "stop" if self.finished or self.stopped else "length"


def load_base(base: str | None, device: str = "cpu"):
    """`(model, tokenizer)`: the embedded LM-adapted T5 when `base` is None, else a Hub id or directory."""
    if base is None:
        from ...embedded import default_model_and_tokenizer

        model, tokenizer = default_model_and_tokenizer()
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        config = AutoConfig.from_pretrained(base)
        cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        model, tokenizer = cls.from_pretrained(base, dtype=torch.float32), AutoTokenizer.from_pretrained(base)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(device).eval(), tokenizer


class Engine:
    """Base model + tokenizer + adapter store; `run` is the scheduler's batch runner (worker thread only)."""

    def __init__(self, model, tokenizer, *, max_adapters: int = DEFAULTS.max_adapters,
                 max_bytes: int | None = DEFAULTS.max_adapter_bytes, precision: str = DEFAULTS.precision,
                 batching: str = DEFAULTS.batching, prefix_cache: bool = DEFAULTS.prefix_cache):
        if batching not in BATCHING:
            raise ValueError(f"batching={batching!r}: use 'continuous' (rows join and leave between decoding steps, "
                             "the default), 'mixed' (one batch at a time, any adapters) or 'per_adapter'.")
        processors = logits_processors_in(getattr(model, "generation_config", None))
        if batching == "continuous" and processors:
            _log.warning("the model's generation config sets %s: greedy generate is not the plain argmax, so "
                         "continuous batching is off; serving with batching='mixed'.", ", ".join(processors))
            batching = "mixed"
        self.batching = batching
        self.tokenizer = tokenizer
        self.registry = AdapterRegistry(model, max_adapters=max_adapters, max_bytes=max_bytes)
        self.encoder_decoder = bool(model.config.is_encoder_decoder)
        self.device = next(model.parameters()).device
        self.precision = precision
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
        self.eos = eos
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
        self.codec = TextCodec(tokenizer, eos, self.encoder_decoder)
        self.prefix_cache: PrefixCache | None = None
        self.running: RunningBatch | None = None
        if batching == "continuous":
            if prefix_cache and not self.encoder_decoder:
                self.prefix_cache = PrefixCache(self.registry.model)
                self.registry.on_evict.append(self.prefix_cache.drop)
            self.running = RunningBatch(self.registry.model, eos_token_id=eos, pad_token_id=self.pad,
                                        encoder_decoder=self.encoder_decoder, prefix_cache=self.prefix_cache,
                                        stops=self._reached_stop)

    @classmethod
    def from_settings(cls, model, tokenizer, settings: ServeSettings) -> Engine:
        """The engine `settings` describe (adapter store budget, precision, batching, prefix cache)."""
        return cls(model, tokenizer, max_adapters=settings.max_adapters, max_bytes=settings.max_adapter_bytes,
                   precision=settings.precision, batching=settings.batching, prefix_cache=settings.prefix_cache)

    @property
    def model(self):
        return self.registry.model

    # ------------------------------------------------------------------------------------------ tokens
    def encode(self, texts: list[str]) -> list[list[int]]:
        return self.codec.encode(texts)

    def encode_labels(self, labels: list[str], append_eos: bool = True) -> list[list[int]]:
        return self.codec.encode_labels(labels, append_eos)

    def decode(self, ids: list[int]) -> str:
        return self.codec.decode(ids)

    # ------------------------------------------------------------------------------------------ batches
    def run(self, kind: str, jobs: list[Job]) -> list:
        self.registry.ensure([job.adapter for job in jobs])
        names = [job.adapter for job in jobs]
        ids, mask = self._pad([job.input_ids for job in jobs])
        with torch.no_grad(), autocast(self.device, self.precision):
            if kind == "generate":
                return self._generate(jobs, names, ids, mask)
            if kind == "classify":
                labels = [job.label_ids or [] for job in jobs]  # a classify job always carries its labels
                scores = score_label_ids(self.model, ids, mask, labels, names, eos_token_id=self.eos)
                return [scores.scores[i, : len(labels[i])].float().cpu().tolist() for i in range(len(jobs))]
        raise ValueError(f"unknown job kind {kind!r}")

    # ------------------------------------------------------------------------------------------ continuous
    @property
    def active(self) -> int:
        """Rows in the running batch (continuous batching)."""
        return len(self.running) if self.running is not None else 0

    @property
    def active_tokens(self) -> int:
        """Summed token cost of the running batch's rows (the scheduler's `max_batch_tokens` bound)."""
        return sum(row.job.cost for row in self.running.rows) if self.running is not None else 0

    @property
    def running_jobs(self) -> list[Job]:
        return [row.job for row in self.running.rows] if self.running is not None else []

    def admit(self, jobs: list[Job]) -> list[tuple[Job, Completion]]:
        """Prefill `jobs` into the running batch; returns the jobs already finished, with their completions."""
        assert self.running is not None, "admit() needs batching='continuous'"
        self.registry.ensure([job.adapter for job in jobs])
        rows = [Row(job, job.adapter, job.max_new_tokens, options=job.options) for job in jobs]
        with torch.no_grad(), autocast(self.device, self.precision):
            done = self.running.admit(rows, [job.input_ids for job in jobs])
        return [(row.job, self._row_completion(row)) for row in done]

    def step(self) -> list[tuple[Job, Completion]]:
        """One decoding step of the running batch; returns the jobs that finished."""
        assert self.running is not None, "step() needs batching='continuous'"
        with torch.no_grad(), autocast(self.device, self.precision):
            done = self.running.step()
        for row in self.running.rows:  # streaming requests see their tokens after every step
            if row.job.on_tokens is not None:
                row.job.on_tokens(list(row.tokens))
        return [(row.job, self._row_completion(row)) for row in done]

    def drop(self, keep) -> list[Job]:
        """Remove the running rows whose job fails `keep(job)` (a cancelled request); returns their jobs."""
        if self.running is None:
            return []
        gone = [row for row in self.running.rows if not keep(row.job)]
        self.running.remove(gone)
        return [row.job for row in gone]

    def reset(self) -> list[Job]:
        """Empty the running batch (after a failed step); returns the jobs it held."""
        if self.running is None:
            return []
        jobs = [row.job for row in self.running.rows]
        self.running.remove(list(self.running.rows))
        return jobs

    def _reached_stop(self, row: Row) -> bool:
        """Whether the row's text holds one of its stop strings (checked after every token)."""
        assert row.options is not None
        text = self.codec.decode(row.tokens)
        return any(stop in text for stop in row.options.stop)

    def _row_completion(self, row: Row) -> Completion:
        done = self._completion(row.tokens)
        done.stopped = row.stopped
        if row.options is not None and row.options.logprobs is not None:
            done.logprobs = row.logprobs[: len(row.tokens)]  # EOS included: a client counts it
        done.prompt_logprobs = row.prompt_logprobs
        return done

    def _completion(self, row: list[int]) -> Completion:
        if self.eos in row:
            stop = row.index(self.eos)
            return Completion(row[:stop], True, stop + 1)
        return Completion(row, False, len(row))

    # ------------------------------------------------------------------------------------------ batch mode
    def _generate(self, jobs: list[Job], names: list[str], ids, mask) -> list[Completion]:
        """Batch mode: one `generate` call per group of rows with the same sampling settings (`generate` takes
        one setting for its whole batch, so a batch-at-a-time server splits its batches by parameters)."""
        groups: dict[tuple, list[int]] = {}
        for i, job in enumerate(jobs):
            o = job.options
            groups.setdefault((0.0, 1.0, 0, None) if o is None else (o.temperature, o.top_p, o.top_k, o.logprobs),
                              []).append(i)
        results: list[Completion | None] = [None] * len(jobs)
        for key, index in groups.items():
            rows = torch.tensor(index, device=ids.device)
            done = self._generate_group([jobs[i] for i in index], [names[i] for i in index], ids[rows], mask[rows],
                                        *key)
            for i, completion in zip(index, done, strict=True):
                results[i] = completion
        return [r for r in results if r is not None]

    def _generate_group(self, jobs: list[Job], names: list[str], ids, mask, temperature: float, top_p: float,
                        top_k: int, logprobs: int | None) -> list[Completion]:
        most = max(job.max_new_tokens for job in jobs)
        options: dict = dict(max_new_tokens=most, num_beams=1, pad_token_id=self.pad, eos_token_id=self.eos,
                             do_sample=temperature > 0)
        if temperature > 0:
            options.update(temperature=temperature, top_p=top_p, top_k=top_k)  # top_k 0: no cut
        if logprobs is not None:
            options.update(return_dict_in_generate=True, output_logits=True)
        if self.batching == "per_adapter" and len(set(names)) == 1 and (logprobs is None or self.encoder_decoder):
            self.model.set_adapter(names[0])
            out: Any = generate_active(self.model, ids, mask, **options)  # a generate output object with logprobs
            sequences = out.sequences if logprobs is not None else out
            if not self.encoder_decoder:
                sequences = sequences[:, ids.shape[1]:]  # [B, N]: the new tokens only
        else:
            out = mixed_generate(self.model, ids, mask, names, **options)
            sequences = out.sequences if logprobs is not None else out
        if self.encoder_decoder:
            sequences = sequences[:, 1:]  # drop the decoder start token
        done = []
        for b, (row, job) in enumerate(zip(sequences.tolist(), jobs, strict=True)):
            completion = self._completion(row[: job.max_new_tokens])
            if logprobs is not None:
                steps = range(len(completion.token_ids) + completion.finished)
                completion.logprobs = [top_entries(torch.log_softmax(out.logits[k][b].float(), -1), row[k], logprobs)
                                       for k in steps]
            done.append(completion)
        return done

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)  # [B, T]
        mask = torch.zeros(len(rows), width, dtype=torch.long)  # [B, T]
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

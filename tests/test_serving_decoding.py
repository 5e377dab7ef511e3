"""Iteration-level decoding for `softprompt serve` (`inference/serving/decoding.py`), in process, tiny models.

The reference for every row is PEFT's own path for that request alone: `set_adapter(name)` and
`softprompt_ext.generate` (greedy). Rows join the running batch at different steps, with different prompt
lengths, inputs and budgets, so padding on both cache axes and rows leaving mid-batch are all exercised.
"""

from __future__ import annotations

import logging
import random
import time
import warnings

import pytest
import torch
from helpers import random_prompt_config
from peft import get_peft_model

from softprompt_ext import generate
from softprompt_ext.inference.serving.decoding import PrefixCache, Row, RunningBatch, logits_processors_in
from softprompt_ext.inference.serving.engine import Engine
from softprompt_ext.inference.serving.scheduler import Job, Scheduler

TEXTS = ["the cat sat on the mat", "a ship", "rain falls from dark clouds in the cold season", "the river",
         "dark clouds", "the mat sat on the cat and the ship"]
ADAPTERS = (("p3", 3, 1), ("p7", 7, 2), ("p5", 5, 3))


def _scaled(make_model, kind):
    base = make_model(kind)
    with torch.no_grad():
        for p in base.parameters():
            if p.dim() > 1:
                p.mul_(3.0)  # tiny random models otherwise repeat one token
    return base.eval()


def _peft_model(make_model, kind):
    with warnings.catch_warnings():  # PEFT's causal generate warning: references use softprompt_ext.generate
        warnings.simplefilter("ignore", UserWarning)
        model = get_peft_model(_scaled(make_model, kind), random_prompt_config(kind, 3, 1), adapter_name="p3")
    for name, length, seed in ADAPTERS[1:]:
        model.add_adapter(name, random_prompt_config(kind, length, seed))
    return model.eval()


def _alone(model, tokenizer, adapter, ids, max_new_tokens, encoder_decoder):
    """Tokens of one request run alone through PEFT's set_adapter path, cut after EOS (EOS kept)."""
    model.set_adapter(adapter)
    x = torch.tensor([ids])
    with torch.no_grad():
        out = generate(model, x, torch.ones_like(x), max_new_tokens=max_new_tokens, do_sample=False,
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)[0].tolist()
    out = out[1:] if encoder_decoder else out[len(ids):]
    out = out[:max_new_tokens]
    eos = tokenizer.eos_token_id
    return out[: out.index(eos) + 1] if eos in out else out


@pytest.mark.parametrize("kind,prefix", [("t5", False), ("llama", False), ("llama", True), ("gpt2", True)])
def test_rows_joining_and_leaving_between_steps_equal_each_row_alone(make_model, tokenizer, kind, prefix):
    model = _peft_model(make_model, kind)
    encoder_decoder = kind == "t5"
    rng = random.Random(7)
    requests = [(rng.choice(ADAPTERS)[0], tokenizer(rng.choice(TEXTS))["input_ids"], rng.randrange(1, 10))
                for _ in range(14)]
    expected = [_alone(model, tokenizer, a, ids, n, encoder_decoder) for a, ids, n in requests]
    assert max(len(e) for e in expected) >= 4 and len({tuple(e) for e in expected}) > 3  # not a trivial check

    cache = PrefixCache(model) if prefix else None
    batch = RunningBatch(model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         encoder_decoder=encoder_decoder, prefix_cache=cache)
    got: dict[int, list[int]] = {}
    pending, widths = list(range(len(requests))), set()
    with torch.no_grad():
        while pending or len(batch):
            k = rng.randrange(0, 4)
            joining, pending = pending[:k], pending[k:]
            if joining:
                rows = [Row(i, requests[i][0], requests[i][2]) for i in joining]
                for row in batch.admit(rows, [requests[i][1] for i in joining]):
                    got[row.job] = row.tokens
            if len(batch):
                widths.add(len(batch))
                for row in batch.step():
                    got[row.job] = row.tokens
    assert got == dict(enumerate(expected))
    assert max(widths) >= 3  # steps really ran several rows (and adapters) together
    if prefix:
        assert cache is not None and len(cache) == len({a for a, _, _ in requests})
        assert cache.hits > 0 and cache.misses == len(cache)  # one prompt prefill per adapter, then reuse


def _engine(make_model, tokenizer, tmp_path, kind, **kwargs):
    model = _peft_model(make_model, kind)
    model.save_pretrained(str(tmp_path), selected_adapters=[a for a, _, _ in ADAPTERS])
    engine = Engine(_scaled(make_model, kind), tokenizer, **kwargs)
    for name, _, _ in ADAPTERS:
        engine.registry.register(name, str(tmp_path / name))
    return engine, model


def test_prefix_cache_follows_the_registry(make_model, tokenizer, tmp_path):
    """Evicting or unloading an adapter drops its cached keys/values; an adapter registered again under the
    same name with other weights is recomputed, and its rows use the new prompt."""
    engine, model = _engine(make_model, tokenizer, tmp_path, "llama", max_adapters=2)
    cache = engine.prefix_cache
    assert cache is not None and engine.batching == "continuous"
    ids = engine.encode(["the cat sat on the mat"])[0]
    first = engine.admit([Job("generate", "p7", ids, max_new_tokens=1)])
    assert len(first) == 1 and len(cache) == 1 and cache.nbytes > 0
    engine.admit([Job("generate", "p3", ids, max_new_tokens=1)])
    engine.admit([Job("generate", "p5", ids, max_new_tokens=1)])  # budget 2: p7 is evicted, its entry dropped
    assert engine.registry.evictions >= 1 and "p7" not in engine.registry.loaded and len(cache) == 2
    # p5 again under its name, now with p7's weights: the cached p5 prefix must not be reused
    engine.registry.register("p5", str(tmp_path / "p7"), replace=True)
    finished = engine.admit([Job("generate", "p5", ids, max_new_tokens=3)])
    while engine.active:
        finished += engine.step()
    ((_, out),) = finished
    assert out.token_ids + ([tokenizer.eos_token_id] if out.finished else []) == _alone(
        model, tokenizer, "p7", ids, 3, False)


def test_scheduler_answers_a_short_request_while_a_long_one_decodes(make_model, tokenizer, tmp_path):
    engine, model = _engine(make_model, tokenizer, tmp_path, "t5")
    # the longest-running request of this seeded tiny model: no EOS within 24 tokens
    candidates = [(a, engine.encode([t])[0]) for a, _, _ in ADAPTERS for t in TEXTS]
    lengths = [len(_alone(model, tokenizer, a, ids, 24, True)) for a, ids in candidates]
    adapter, long_ids = candidates[lengths.index(max(lengths))]
    assert max(lengths) == 24 and tokenizer.eos_token_id not in _alone(model, tokenizer, adapter, long_ids, 24, True)
    steps: list[int] = []
    scheduler = Scheduler(engine.run, stepper=engine, on_batch=lambda kind, jobs, s: steps.append(len(jobs)))
    scheduler.start()
    try:
        long_job = Job("generate", adapter, long_ids, max_new_tokens=24)
        (long_future,) = scheduler.submit([long_job])
        deadline = time.monotonic() + 30
        while engine.active == 0 and not long_future.done() and time.monotonic() < deadline:
            time.sleep(0.001)
        short = Job("generate", "p5", engine.encode(["a ship"])[0], max_new_tokens=2)
        (short_future,) = scheduler.submit([short])
        result = short_future.result(timeout=30)
        # the short request joined the running batch and left it while the long one was still decoding
        assert not long_future.done()
        assert result.num_tokens <= 2
        assert long_future.result(timeout=60).num_tokens == 24
    finally:
        scheduler.stop()
    assert max(steps) == 2  # a decoding step ran both rows together


def test_a_cancelled_row_leaves_and_a_failed_step_fails_only_the_running_rows(make_model, tokenizer, tmp_path):
    engine, _ = _engine(make_model, tokenizer, tmp_path, "gpt2")
    ids = engine.encode(TEXTS[:3])
    jobs = [Job("generate", name, row, max_new_tokens=50) for name, row in zip(("p3", "p7", "p5"), ids, strict=True)]
    engine.admit(jobs)
    jobs[1].abandon()
    assert [j.adapter for j in engine.drop(lambda job: not job.abandoned)] == ["p7"]
    assert engine.active == 2 and {id(j) for j in engine.running_jobs} == {id(jobs[0]), id(jobs[2])}
    engine.reset()

    scheduler = Scheduler(engine.run, stepper=engine)
    original, calls = engine.running.step, {"n": 0}

    def failing_once():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("device lost")
        return original()

    engine.running.step = failing_once  # type: ignore[method-assign]
    scheduler.start()
    try:
        (bad,) = scheduler.submit([Job("generate", "p3", ids[0], max_new_tokens=3)])
        with pytest.raises(RuntimeError, match="device lost"):
            bad.result(timeout=30)
        (good,) = scheduler.submit([Job("generate", "p7", ids[1], max_new_tokens=3)])
        assert good.result(timeout=30).num_tokens >= 1  # the server kept serving
    finally:
        scheduler.stop()


def test_logits_processors_turn_continuous_batching_off(make_model, tokenizer, caplog):
    base = _scaled(make_model, "t5")
    assert logits_processors_in(base.generation_config) == []
    base.generation_config.repetition_penalty = 1.3
    assert logits_processors_in(base.generation_config) == ["repetition_penalty=1.3"]
    with caplog.at_level(logging.WARNING, logger="softprompt_ext.serve"):
        engine = Engine(base, tokenizer)
    assert engine.batching == "mixed" and engine.running is None
    assert "repetition_penalty=1.3" in caplog.text and "batching='mixed'" in caplog.text
    with pytest.raises(ValueError, match="batching='rows'.*'continuous'"):
        Engine(_scaled(make_model, "t5"), tokenizer, batching="rows")


def test_an_abandoned_running_row_stops_decoding(make_model, tokenizer, tmp_path):
    """A request whose client gave up (timeout, disconnect) while its row decodes leaves the running batch at
    the next step: nothing keeps computing for it and its future gets no result."""
    engine, _ = _engine(make_model, tokenizer, tmp_path, "gpt2")
    steps: list[int] = []
    scheduler = Scheduler(engine.run, stepper=engine, on_batch=lambda kind, jobs, s: steps.append(len(jobs)))
    scheduler.start()
    try:
        job = Job("generate", "p3", engine.encode(TEXTS[:1])[0], max_new_tokens=200)
        (future,) = scheduler.submit([job])
        deadline = time.monotonic() + 30
        while len(steps) < 3 and time.monotonic() < deadline:  # the row is decoding
            time.sleep(0.001)
        assert engine.active == 1 and not future.done()
        job.abandon()
        while engine.active and time.monotonic() < deadline:
            time.sleep(0.001)
        assert engine.active == 0 and not future.done() and len(steps) < 150
    finally:
        scheduler.stop()


def test_demo_adapter_serves_on_the_embedded_model_in_process():
    """`softprompt serve --demo`'s adapter: the embedded T5 and an untrained class-label prompt answer a
    completion and a classification at once (no adapter to train first)."""
    from fastapi.testclient import TestClient

    from softprompt_ext.cli import DEMO_ADAPTER, demo_adapter
    from softprompt_ext.inference.serving import build_app

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # building the demo prompt warns about nothing of ours
        app = build_app(adapters=[f"{DEMO_ADAPTER}={demo_adapter()}"], device="cpu", strict=True)
    with TestClient(app) as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [DEMO_ADAPTER]
        body = {"model": DEMO_ADAPTER, "prompt": "corn syrup: syrup prepared from corn", "max_tokens": 4}
        out = client.post("/v1/completions", json=body)
        assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] >= 1
        labels = ["food", "plant", "animal"]
        ranked = client.post("/v1/classify", json={"model": DEMO_ADAPTER, "input": body["prompt"], "labels": labels})
        assert ranked.status_code == 200 and ranked.json()["data"][0]["label"] in labels


def test_demo_with_another_base_is_refused(capsys):
    from softprompt_ext.cli import main

    assert main(["serve", "--demo", "--base", "some/model"]) == 2
    assert "--demo serves a prompt for the embedded T5, but --base 'some/model' was given" in capsys.readouterr().err

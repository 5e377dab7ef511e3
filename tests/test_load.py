"""Under load: 64 prompt adapters in one model, mixed-task batches of 128, and no leaks.

* 64 SoftPromptConfig adapters (P from 1 to 8) are saved, then loaded into one model with PEFT's
  `load_adapter` through `load_adapter_safely`.
* Batches of 128 examples, each with its own adapter, go through `inference.mixed_batches.mixed_forward`; a sample of
  examples is compared with running that example alone after `set_adapter`, and the resident memory
  (psutil RSS; psutil comes with accelerate) must not grow with the number of batches.
* Loading and deleting an adapter 200 times returns the model to its starting state: same adapters, same
  parameter count, the deleted prompt encoders are freed (weak references die), and RSS stays flat.
"""

from __future__ import annotations

import gc
import random
import weakref

import psutil
import pytest
import torch
from peft import get_peft_model

from softprompt_ext import SoftPromptConfig
from softprompt_ext.adapters.validation import load_adapter_safely
from softprompt_ext.inference.mixed_batches import mixed_forward
from softprompt_ext.tiny_models import build_t5

ADAPTERS, BATCH, VOCAB, H, T = 64, 128, 4096, 16, 10  # logits of one batch: 128 x 3 x 4096 floats = 6 MB
MB = 1 << 20


def names() -> list[str]:
    return [f"task{i:02d}" for i in range(ADAPTERS)]


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """64 adapters saved in one directory (one subfolder each); prompt i has 1 + i % 8 rows."""
    maker = None
    for i, name in enumerate(names()):
        config = SoftPromptConfig(
            task_type="SEQ_2_SEQ_LM",
            num_virtual_tokens=1 + i % 8,
            prompt_tuning_init="RANDOM_UNIFORM",
            init_range=1.0,
            init_seed=i,
        )
        if maker is None:
            maker = get_peft_model(build_t5(VOCAB, d_model=H), config, adapter_name=name)
        else:
            maker.add_adapter(name, config)
    root = tmp_path_factory.mktemp("adapters")
    maker.save_pretrained(str(root))  # adapter "x" goes to root/x (PEFT's layout for named adapters)
    return root


@pytest.fixture(scope="module")
def loaded(saved):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    first, *rest = names()
    model = load_adapter_safely(build_t5(VOCAB, d_model=H), saved / first, adapter_name=first)
    for name in rest:
        load_adapter_safely(model, saved / name, adapter_name=name)
    yield model
    torch.set_num_threads(threads)


def batch(seed: int):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, T + 1, (BATCH,), generator=generator)  # [B] real lengths, right padding
    input_ids = torch.randint(3, VOCAB, (BATCH, T), generator=generator)  # [B, T]
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()  # [B, T]
    input_ids = input_ids * mask
    labels = torch.randint(3, VOCAB, (BATCH, 3), generator=generator)  # [B, 3]
    which = random.Random(seed).choices(names(), k=BATCH)
    return input_ids, mask, labels, which


def test_64_adapters_are_loaded_with_their_own_prompts(loaded, saved):
    assert sorted(loaded.peft_config) == names() and len(loaded.prompt_encoder) == ADAPTERS
    for i, name in enumerate(names()):
        assert loaded.prompt_encoder[name].embedding.weight.shape == (1 + i % 8, H)
    assert not torch.equal(
        loaded.prompt_encoder["task00"].embedding.weight, loaded.prompt_encoder["task08"].embedding.weight
    )


def test_mixed_batches_of_128_match_single_adapter_runs_and_memory_stays_flat(loaded):
    with torch.no_grad():
        out = mixed_forward(loaded, *batch(0)[:2], batch(0)[3], labels=batch(0)[2])
        assert out.logits.shape == (BATCH, 3, VOCAB) and torch.isfinite(out.loss_per_example).all()

        input_ids, mask, labels, which = batch(0)
        for i in random.Random(1).sample(range(BATCH), 12):  # each alone, unpadded, with PEFT's own forward
            loaded.set_adapter(which[i])
            real = int(mask[i].sum())
            alone = loaded(input_ids=input_ids[i : i + 1, :real], labels=labels[i : i + 1])
            torch.testing.assert_close(out.loss_per_example[i], alone.loss, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(out.logits[i], alone.logits[0], rtol=1e-4, atol=1e-5)

        for seed in range(1, 4):  # warm-up: allocator pools, lazily built kernels
            mixed_forward(loaded, *batch(seed)[:2], batch(seed)[3], labels=batch(seed)[2])
        before, outputs = rss(), []
        for seed in range(4, 24):
            input_ids, mask, labels, which = batch(seed)
            out = mixed_forward(loaded, input_ids, mask, which, labels=labels)
            assert torch.isfinite(out.loss)
            outputs.append(weakref.ref(out.logits))
            del out
        growth = rss() - before
    # nothing the library holds keeps a batch's outputs alive (exact), and the process does not grow by the
    # 20 x 6 MB of logits that keeping them would cost (RSS is allocator-noisy: the bound is half of that)
    assert all(ref() is None for ref in outputs), "mixed_forward outputs are kept alive after the caller drops them"
    assert growth < 64 * MB, f"RSS grew by {growth / MB:.1f} MB over 20 batches"
    print(f"RSS growth over 20 mixed batches of {BATCH}: {growth / MB:.2f} MB")


def test_loading_and_deleting_200_times_leaks_nothing(loaded, saved):
    baseline = (sorted(loaded.peft_config), len(loaded.prompt_encoder), len(loaded.prompt_tokens))
    parameters = sum(p.numel() for p in loaded.parameters())
    active = loaded.active_adapter
    freed: list[weakref.ref] = []

    def cycle(i: int) -> None:
        name = f"extra{i}"
        load_adapter_safely(loaded, saved / names()[i % ADAPTERS], adapter_name=name)
        assert len(loaded.prompt_encoder) == ADAPTERS + 1
        freed.append(weakref.ref(loaded.prompt_encoder[name]))
        loaded.delete_adapter(name)

    for i in range(20):  # warm-up
        cycle(i)
    before = rss()
    for i in range(20, 200):
        cycle(i)
    growth = rss() - before

    assert (sorted(loaded.peft_config), len(loaded.prompt_encoder), len(loaded.prompt_tokens)) == baseline
    assert sum(p.numel() for p in loaded.parameters()) == parameters and loaded.active_adapter == active
    gc.collect()
    assert [ref() for ref in freed] == [None] * 200, "deleted prompt encoders are still referenced"
    assert growth < 16 * MB, f"RSS grew by {growth / MB:.1f} MB over 180 load/delete cycles"
    print(f"RSS growth over 180 load/delete cycles: {growth / MB:.2f} MB")

"""Soft prompts on 8-bit and 4-bit base models (bitsandbytes): PEFT's documented path, run end to end.

`from_pretrained(quantization_config=...)` -> `prepare_model_for_kbit_training` ->
`get_peft_model(SoftPromptConfig)` -> Trainer. bitsandbytes 0.50 runs both on the CPU; the CUDA entries
run where a GPU is present. The tiny T5 has
d_model 64 so that every linear layer has dimensions bitsandbytes quantises.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from datasets import Dataset
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM, BitsAndBytesConfig, DataCollatorForSeq2Seq, Seq2SeqTrainer

from softprompt_ext import SoftPromptConfig, tiny_models
from softprompt_ext.training.recipe import PaperTrainingArguments, check_trainable_prompt

pytest.importorskip("bitsandbytes")

D = 64
P = 4
PAIRS = [("the movie was great", "positive"), ("a terrible film", "negative")] * 2


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


NO_GPU = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device for bitsandbytes on GPU"
)
CASES = [
    pytest.param("8bit", "cpu", id="8bit-cpu"),
    pytest.param("4bit", "cpu", id="4bit-cpu"),
    pytest.param("8bit", "cuda", id="8bit-cuda", marks=[NO_GPU, pytest.mark.gpu]),
    pytest.param("4bit", "cuda", id="4bit-cuda", marks=[NO_GPU, pytest.mark.gpu]),
]
# relative L2 distance of first-step logits, quantised vs full precision, same adapter; measured on CPU with
# random-weight model: 8-bit 0.014, 4-bit (default fp4) 0.18. Bounds leave room for other backends.
LOGIT_TOLERANCE = {"8bit": 0.05, "4bit": 0.35}


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("t5-64"))
    tiny_models.build_t5(len(tokenizer), d_model=D).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data(tokenizer) -> Dataset:
    return Dataset.from_list(
        [dict(input_ids=tokenizer(x)["input_ids"], labels=tokenizer(y)["input_ids"]) for x, y in PAIRS]
    )


def load_quantised(model_dir: str, bits: str, device: str):
    config = (
        BitsAndBytesConfig(load_in_8bit=True) if bits == "8bit" else BitsAndBytesConfig(load_in_4bit=True)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bitsandbytes' notes about casting inputs to float16
        return AutoModelForSeq2SeqLM.from_pretrained(
            model_dir, quantization_config=config, device_map={"": device}
        )


def soft_config(model_dir: str) -> SoftPromptConfig:
    return SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=P,
        tokenizer_name_or_path=model_dir,
        sample_vocab_size=50,
        init_seed=0,
    )


def train(model, tokenizer, data, output_dir, device: str, **overrides) -> list[float]:
    settings = dict(
        per_device_train_batch_size=4,
        max_steps=8,
        eval_strategy="no",
        save_strategy="no",
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        seed=0,
    )
    args = PaperTrainingArguments(str(output_dir), **{**settings, **overrides})
    trainer = Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
    )
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def mean_loss(model, tokenizer, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss on PAIRS, logits of the first decoder step `[B, 1, V]`)."""
    batch = tokenizer([x for x, _ in PAIRS], return_tensors="pt", padding=True).to(device)
    labels = tokenizer([y for _, y in PAIRS], return_tensors="pt", padding=True)["input_ids"].to(device)
    labels[labels == tokenizer.pad_token_id] = -100
    model.eval()
    with torch.no_grad():
        loss = model(**batch, labels=labels).loss.float()
        start = torch.zeros(len(PAIRS), 1, dtype=torch.long, device=device)
        logits = model(**batch, decoder_input_ids=start).logits.float()  # [B, 1, V]
    return loss, logits


@pytest.mark.slow
@pytest.mark.parametrize("bits, device", CASES)
def test_quantised_t5_trains_generates_and_the_prompt_transfers(
    bits, device, model_dir, tokenizer, data, tmp_path
):
    base = prepare_model_for_kbit_training(load_quantised(model_dir, bits, device))
    assert base.is_activation_checkpointing  # PEFT's default turns gradient checkpointing on
    model = get_peft_model(base, soft_config(model_dir))
    history = train(model, tokenizer, data, tmp_path / "run", device)
    assert history[-1] < 0.8 * history[0], history  # measured 8-bit 33.7 -> 22.0, 4-bit 33.7 -> 19.3

    batch = tokenizer([x for x, _ in PAIRS[:2]], return_tensors="pt", padding=True).to(device)
    model.eval()
    with torch.no_grad():
        generated = model.generate(**batch, max_new_tokens=4)  # [2, <=5]
    assert generated.shape[0] == 2 and 2 <= generated.shape[1] <= 5
    assert generated[:, 0].tolist() == [0, 0]  # T5's decoder start

    adapter = str(tmp_path / "adapter")
    model.save_pretrained(adapter)
    saved = load_file(f"{adapter}/adapter_model.safetensors")
    assert list(saved) == ["prompt_embeddings"]
    assert saved["prompt_embeddings"].dtype == torch.float32 and saved["prompt_embeddings"].shape == (P, D)

    quantised_loss, quantised_logits = mean_loss(model, tokenizer, device)
    full = AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(device)
    initial_loss, _ = mean_loss(get_peft_model(full, soft_config(model_dir)), tokenizer, device)
    full = AutoModelForSeq2SeqLM.from_pretrained(model_dir).to(device)
    trained_loss, full_logits = mean_loss(PeftModel.from_pretrained(full, adapter), tokenizer, device)
    distance = (quantised_logits - full_logits).norm() / full_logits.norm()
    assert distance < LOGIT_TOLERANCE[bits], float(distance)
    assert trained_loss < 0.9 * initial_loss, (
        float(initial_loss),
        float(trained_loss),
        float(quantised_loss),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "device", [pytest.param("cpu"), pytest.param("cuda", marks=[NO_GPU, pytest.mark.gpu])]
)
def test_gradient_checkpointing_with_a_quantised_model_works(device, model_dir, tokenizer, data, tmp_path):
    """Trainer's `activation_checkpointing=True` (formerly `gradient_checkpointing`) on an 8-bit model works:
    the prompt sits in the encoder input, which therefore requires grad, so checkpointed layers pass gradients
    back with or without `prepare_model_for_kbit_training`; the losses equal those of the run without it."""
    plain = get_peft_model(load_quantised(model_dir, "8bit", device), soft_config(model_dir))
    expected = train(plain, tokenizer, data, tmp_path / "plain", device, max_steps=4)

    model = get_peft_model(load_quantised(model_dir, "8bit", device), soft_config(model_dir))
    history = train(
        model, tokenizer, data, tmp_path / "gc", device, max_steps=4, activation_checkpointing=True
    )
    assert model.get_base_model().is_activation_checkpointing
    assert history == pytest.approx(expected, rel=1e-4)
    assert history[-1] < history[0]


def test_preparing_after_get_peft_model_is_caught(model_dir):
    """Wrong order freezes the prompt, so the Trainer would silently train nothing; the check says so."""
    model = get_peft_model(load_quantised(model_dir, "8bit", "cpu"), soft_config(model_dir))
    model = prepare_model_for_kbit_training(model)
    assert not any(p.requires_grad for p in model.parameters())  # PEFT's behaviour this guards against
    with pytest.raises(ValueError, match=r"prepare_model_for_kbit_training freezes every parameter"):
        check_trainable_prompt(model)

"""Compatibility with plain PEFT, both ways.

1. With softprompt_ext imported, a plain `PromptTuningConfig` behaves exactly as without it.
2. An adapter saved from a `SoftPromptConfig` model loads in a process that never imports softprompt_ext,
   gives identical logits, and prints no warning telling the user to upgrade anything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from peft.tuners.prompt_tuning import PromptEmbedding

from softprompt_ext import SoftPromptConfig, registration


def plain_model(make_model, init, tokenizer_dir, seed=0):
    kwargs = {"prompt_tuning_init": init}
    if init == "TEXT":
        kwargs.update(prompt_tuning_init_text="the cat sat", tokenizer_name_or_path=tokenizer_dir)
    base = make_model("t5")
    torch.manual_seed(seed)
    return get_peft_model(base, PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, **kwargs))


@pytest.mark.parametrize("init", ["RANDOM", "SAMPLE_VOCAB", "TEXT"])
def test_plain_prompt_tuning_config_is_unchanged(init, make_model, tokenizer_dir, tokenizer):
    with_ext = plain_model(make_model, init, tokenizer_dir)
    registration.unregister()
    try:
        without_ext = plain_model(make_model, init, tokenizer_dir)
    finally:
        registration.register()
    assert type(without_ext.prompt_encoder["default"]) is PromptEmbedding
    a, b = with_ext.prompt_encoder["default"], without_ext.prompt_encoder["default"]
    assert a.embedding.weight.shape == b.embedding.weight.shape == (8, 16)  # PEFT's 2 x P for seq2seq
    torch.testing.assert_close(a.embedding.weight, b.embedding.weight, rtol=0, atol=0)
    enc = tokenizer(["the cat"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(with_ext(**enc, labels=enc["input_ids"]).logits, without_ext(**enc, labels=enc["input_ids"]).logits)


def test_plain_adapter_loads_as_plain_config(make_model, tmp_path):
    plain_model(make_model, "RANDOM", None).save_pretrained(str(tmp_path))
    loaded = PeftModel.from_pretrained(make_model("t5"), str(tmp_path))
    config = loaded.peft_config["default"]
    assert type(config) is registration.PromptTuningConfigLoader and not isinstance(config, SoftPromptConfig)
    assert loaded.prompt_encoder["default"].embedding.weight.shape == (8, 16)


def test_get_peft_config_still_builds_plain_config():
    from peft import get_peft_config

    config = get_peft_config({"peft_type": "PROMPT_TUNING", "task_type": "SEQ_2_SEQ_LM", "num_virtual_tokens": 3})
    assert type(config) is registration.PromptTuningConfigLoader and not isinstance(config, SoftPromptConfig)
    assert config.to_dict() == PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3).to_dict()


_LOAD_WITHOUT_EXT = textwrap.dedent(
    """
    import json, sys, warnings
    warnings.simplefilter("always")
    import torch
    from peft import AutoPeftModelForSeq2SeqLM, PeftModel, PromptTuningConfig
    from transformers import AutoModelForSeq2SeqLM
    base_dir, adapter_dir, inputs_path = sys.argv[1:4]
    inputs = torch.load(inputs_path)
    with warnings.catch_warnings(record=True) as caught:
        a = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_dir), adapter_dir).eval()
        b = AutoPeftModelForSeq2SeqLM.from_pretrained(adapter_dir).eval()
    with torch.no_grad():
        la, lb = a(**inputs).logits, b(**inputs).logits
    assert "softprompt_ext" not in sys.modules
    print(json.dumps({
        "config_type": type(a.peft_config["default"]).__name__,
        "logits_a": la.tolist(), "logits_b": lb.tolist(),
        "warnings": [str(w.message) for w in caught],
    }))
    """
)


@pytest.mark.slow
def test_adapter_loads_in_process_without_softprompt_ext(make_model, tokenizer, tokenizer_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    base_dir = tmp_path / "base"
    make_model("t5").save_pretrained(str(base_dir))
    base = AutoModelForSeq2SeqLM.from_pretrained(str(base_dir))  # name_or_path = base_dir, for AutoPeftModel
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=6, prompt_tuning_init="CLASS_LABELS",
        class_labels=["positive", "negative"], tokenizer_name_or_path=tokenizer_dir, sample_vocab_size=50, init_seed=0,
    )
    model = get_peft_model(base, config).eval()
    adapter_dir = tmp_path / "adapter"
    model.save_pretrained(str(adapter_dir))
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base_dir)

    enc = tokenizer(["the cat sat on the mat", "a great movie"], return_tensors="pt", padding=True)
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": enc["input_ids"][:, :3].contiguous()}
    torch.save(inputs, tmp_path / "inputs.pt")
    with torch.no_grad():
        expected = model(**inputs).logits

    proc = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_EXT, str(base_dir), str(adapter_dir), str(tmp_path / "inputs.pt")],
        capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["config_type"] == "PromptTuningConfig"
    # Another process may pick another number of threads and so another summation order:
    # float32 round-off (~1e-6 here), not a different prompt. A wrong prompt moves logits by >1e-2.
    torch.testing.assert_close(torch.tensor(result["logits_a"]), expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(result["logits_b"]), expected, rtol=1e-4, atol=1e-5)
    noisy = [w for w in result["warnings"] if "upgrade" in w.lower() or "unexpected keyword" in w.lower()]
    assert noisy == []
    assert "upgrade" not in proc.stderr.lower()

"""Client side of `tests/test_hub.py`: the user's Hub workflow, run against the test Hub in a subprocess.

`huggingface_hub` reads `HF_ENDPOINT` when it is imported, so the test starts `tests/hub_server.py` and runs
this script with `HF_ENDPOINT`, `HF_TOKEN` and a temporary `HF_HOME` in the environment. Nothing here
touches `huggingface_hub` internals: every step is the public call a user would make.

    python tests/scripts/hub_client.py push OUT      # base model + tokenizer, the adapter twice, a card push
    python tests/scripts/hub_client.py pull OUT      # PeftModel / AutoPeftModel / revision= / file list
    python tests/scripts/hub_client.py offline OUT   # HF_HUB_OFFLINE=1, from the HF cache only

Each phase writes `OUT/<phase>.json` (facts) and `OUT/<phase>.safetensors` (prompts `[P, H]` and
logits `[B, T, V]`); the test compares them across processes.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from safetensors.torch import save_file

from softprompt_ext.adapters.hub import push_adapter

BASE_REPO = "tester/tiny-t5-lm-adapt"  # the base model lives on the test Hub under its own id
ADAPTER_REPO = "tester/tiny-t5-softprompt"
CARD_REPO = "tester/tiny-t5-softprompt-card"  # pushed by save_pretrained + upload_folder (softprompt_ext.adapters.hub.push_adapter)
LABELS = ["positive", "negative"]
SOURCE = ["this is a positive review of a wonderful book", "a terrible film with a weak story"]
TARGET = ["positive", "negative"]


def _batch(tokenizer) -> dict[str, torch.Tensor]:
    enc = tokenizer(SOURCE, padding=True, return_tensors="pt")
    enc["labels"] = tokenizer(TARGET, padding=True, return_tensors="pt")["input_ids"]  # [B, T]
    return dict(enc)


def _logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(**_batch(tokenizer)).logits.float()  # [B, T, V]


def _prompt(model) -> torch.Tensor:
    return model.prompt_encoder["default"].embedding.weight.detach().clone()  # [P, H]


def _load_base():
    from transformers import AutoModelForSeq2SeqLM

    return AutoModelForSeq2SeqLM.from_pretrained(BASE_REPO).eval()


def push(out: str) -> None:
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from softprompt_ext import SoftPromptConfig
    from softprompt_ext.tiny_models import build_t5, build_tokenizer

    tokenizer = build_tokenizer()
    build_t5(len(tokenizer)).push_to_hub(BASE_REPO)
    tokenizer.push_to_hub(BASE_REPO)

    base = _load_base()  # from the Hub: base_model_name_or_path becomes the Hub id
    tokenizer = AutoTokenizer.from_pretrained(BASE_REPO)
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=4,
        prompt_tuning_init="CLASS_LABELS",
        class_labels=LABELS,
        tokenizer_name_or_path=BASE_REPO,
        sample_vocab_size=50,
        init_seed=7,
    )
    model = get_peft_model(base, config).eval()
    first = model.push_to_hub(ADAPTER_REPO)
    tensors = {"prompt_first": _prompt(model), "logits_first": _logits(model, tokenizer)}

    with torch.no_grad():  # stands in for a training step: the second push must carry a different prompt
        model.prompt_encoder["default"].embedding.weight.add_(0.25)
    second = model.push_to_hub(ADAPTER_REPO)
    tensors.update(prompt_second=_prompt(model), logits_second=_logits(model, tokenizer))
    push_adapter(model, CARD_REPO)

    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, "push.safetensors"))
    facts = {"first_commit": first.oid, "second_commit": second.oid,
             "base_model_name_or_path": model.peft_config["default"].base_model_name_or_path}
    _write(out, "push", facts)


def pull(out: str, offline: bool = False) -> None:
    from huggingface_hub import HfApi, ModelCard
    from peft import AutoPeftModelForSeq2SeqLM, PeftModel
    from transformers import AutoTokenizer

    import softprompt_ext  # noqa: F401  (registers: the loaded config becomes a SoftPromptConfig)

    tokenizer = AutoTokenizer.from_pretrained(BASE_REPO)
    model = PeftModel.from_pretrained(_load_base(), ADAPTER_REPO).eval()
    auto = AutoPeftModelForSeq2SeqLM.from_pretrained(ADAPTER_REPO).eval()
    config = model.peft_config["default"]
    tensors = {
        "prompt": _prompt(model),
        "logits": _logits(model, tokenizer),
        "prompt_auto": _prompt(auto),
        "logits_auto": _logits(auto, tokenizer),
    }
    facts = {
        "config_class": type(config).__name__,
        "auto_config_class": type(auto.peft_config["default"]).__name__,
        "record": {name: getattr(config, name) for name in config.record_field_names()},
        "num_virtual_tokens": config.num_virtual_tokens,
        "auto_base_model": auto.base_model.config.name_or_path,
    }
    if not offline:
        with open(os.path.join(out, "push.json"), encoding="utf-8") as handle:
            first = json.load(handle)["first_commit"]
        pinned = PeftModel.from_pretrained(_load_base(), ADAPTER_REPO, revision=first).eval()
        tensors.update(prompt_pinned=_prompt(pinned), logits_pinned=_logits(pinned, tokenizer))
        api = HfApi()
        facts.update(
            files=sorted(api.list_repo_files(ADAPTER_REPO)),
            files_first=sorted(api.list_repo_files(ADAPTER_REPO, revision=first)),
            card_files=sorted(api.list_repo_files(CARD_REPO)),
            card=_card_facts(ModelCard.load(ADAPTER_REPO)),
            card_uploaded=_card_facts(ModelCard.load(CARD_REPO)),
        )
    phase = "offline" if offline else "pull"
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, f"{phase}.safetensors"))
    _write(out, phase, facts)


def _card_facts(card) -> dict:
    return {
        "library_name": card.data.get("library_name"),
        "tags": card.data.get("tags") or [],
        "base_model": card.data.get("base_model"),
        "text": card.text,
    }


def _write(out: str, phase: str, facts: dict) -> None:
    with open(os.path.join(out, f"{phase}.json"), "w", encoding="utf-8") as handle:
        json.dump(facts, handle, indent=2, default=str)


if __name__ == "__main__":
    phase, out_dir = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    if phase == "push":
        push(out_dir)
    elif phase == "pull":
        pull(out_dir)
    elif phase == "offline":
        pull(out_dir, offline=True)
    else:
        raise SystemExit(f"unknown phase {phase!r}; use push, pull or offline")

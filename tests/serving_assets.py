"""What the serving tests share: tiny bases with prompt adapters saved to a directory, and PEFT references.

`causal_assets(root)` writes a Llama-shaped base (its tokenizer given a chat template) and adapters p3 / p7 /
p5; `t5_assets(root)` a T5 base (no chat template) and adapter t3. `PeftReference` computes, in this process
through PEFT's own `set_adapter` path, what the server must answer.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from helpers import free_port
from peft import PeftModel, get_peft_model

from softprompt_ext import SoftPromptConfig, tiny_models

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
ADAPTERS = (("p3", 3, 1), ("p7", 7, 2), ("p5", 5, 3))


def _config(task: str, length: int, seed: int) -> SoftPromptConfig:
    return SoftPromptConfig(task_type=task, num_virtual_tokens=length, prompt_tuning_init="RANDOM_UNIFORM",
                            init_range=1.0, init_seed=seed)


def _scaled(model):
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(3.0)  # tiny random models otherwise repeat one token
    return model.eval()


def causal_assets(root: Path) -> dict:
    """`{"base", "folder"}`: a tiny Llama + tokenizer (with a chat template) and adapters p3/p7/p5 in one folder."""
    tokenizer = tiny_models.build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    base = _scaled(tiny_models.build_llama(len(tokenizer)))
    base.save_pretrained(root / "causal")
    tokenizer.save_pretrained(root / "causal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = get_peft_model(base, _config("CAUSAL_LM", 3, 1), adapter_name="p3")
    for name, length, seed in ADAPTERS[1:]:
        model.add_adapter(name, _config("CAUSAL_LM", length, seed))
    model.save_pretrained(root / "causal_adapters", selected_adapters=[a for a, _, _ in ADAPTERS])
    return {"base": str(root / "causal"), "folder": str(root / "causal_adapters")}


def t5_assets(root: Path) -> dict:
    """`{"base", "folder"}`: a tiny T5 + tokenizer (no chat template) and adapter t3."""
    tokenizer = tiny_models.build_tokenizer()
    base = _scaled(tiny_models.build_t5(len(tokenizer)))
    base.save_pretrained(root / "t5")
    tokenizer.save_pretrained(root / "t5")
    get_peft_model(base, _config("SEQ_2_SEQ_LM", 3, 1), adapter_name="t3").save_pretrained(root / "t5_adapters")
    return {"base": str(root / "t5"), "folder": str(root / "t5_adapters")}


class PeftReference:
    """A causal base with the adapters of `folder`, loaded through PEFT; answers computed one request alone."""

    def __init__(self, base: str, folder: str, names=tuple(a for a, _, _ in ADAPTERS)):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
        self.model = PeftModel.from_pretrained(model, str(Path(folder) / names[0]), adapter_name=names[0])
        for name in names[1:]:
            self.model.load_adapter(str(Path(folder) / name), adapter_name=name)
        self.model.eval()
        self.lengths = {name: self.model.peft_config[name].num_virtual_tokens for name in names}

    def token_logprobs(self, name: str, ids: list[int]) -> torch.Tensor:
        """`[T, V]`: row j is log p(. | prompt, ids[:j + 1]) -- row j - 1 scores ids[j]."""
        self.model.set_adapter(name)
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids])).logits[0]  # [P + T, V]
        return torch.log_softmax(logits[self.lengths[name]:].float(), -1)

    def greedy(self, name: str, ids: list[int], n: int) -> list[int]:
        """`n` greedy tokens after `ids` (EOS kept when it comes), by repeated full forwards."""
        out = list(ids)
        for _ in range(n):
            token = int(self.token_logprobs(name, out)[-1].argmax())
            out.append(token)
            if token == self.tokenizer.eos_token_id:
                break
        return out[len(ids):]


class ServerProcess:
    """`softprompt serve ARGS` in a process of its own on a free 127.0.0.1 port (fp32), with `env` on top of an
    offline environment (a None value removes the variable); `url`, `stop()`."""

    def __init__(self, args: list[str], log: Path, timeout_s: float = 120.0, env: dict | None = None):
        import os
        import subprocess
        import sys
        import time

        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
        base_env.pop("SOFTPROMPT_ADMIN_TOKEN", None)
        merged = {**base_env, **(env or {})}
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "softprompt_ext", "serve", "--port", str(self.port),
                                      "--precision", "fp32", *args], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                     env={k: v for k, v in merged.items() if v is not None})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start: {log.read_text()[-3000:]}")

    def stop(self) -> int | None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

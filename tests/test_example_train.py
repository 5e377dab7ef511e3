"""examples/train_text2text.py: the documented runs, as a subprocess and in-process, each ending in an
adapter that loads. The Hub paths (`--model_name_or_path google/...`, `--dataset_name ...`) go through the
same code as the local directory and files used here."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from peft import AutoPeftModelForSeq2SeqLM, PeftModel
from safetensors.torch import load_file

from softprompt_ext import SoftPromptConfig, tiny_models
from softprompt_ext.embedded import DEFAULT_D_MODEL, default_model_and_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_text2text.py")


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_text2text", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def local_model_dir(tokenizer, tmp_path_factory) -> str:
    """A saved tiny T5 + tokenizer: stands in for a Hub model id (same `from_pretrained` code path)."""
    path = str(tmp_path_factory.mktemp("t5-local"))
    tiny_models.build_t5(len(tokenizer), d_model=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def boolq_like_files(tmp_path_factory) -> tuple[str, str]:
    """BoolQ-shaped local files: two input columns and an integer label."""
    folder = tmp_path_factory.mktemp("boolq-like")
    rows = [
        {
            "question": "is the sky blue on a clear day",
            "passage": "the sky is blue on a clear day",
            "label": 1,
        },
        {
            "question": "is a carrot a fruit",
            "passage": "an apple is a fruit and a carrot is a vegetable",
            "label": 0,
        },
        {
            "question": "do birds build nests",
            "passage": "birds build nests in trees during the spring",
            "label": 1,
        },
        {
            "question": "is the hammer a fruit",
            "passage": "the hammer is a tool used to drive a nail",
            "label": 0,
        },
    ]
    paths = []
    for name in ("train", "dev"):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        paths.append(str(path))
    return paths[0], paths[1]


@pytest.mark.slow
def test_no_argument_demo_runs_as_a_script_and_saves_a_loadable_adapter(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # the demo with a shorter schedule: every other setting is the no-argument default
    command = [
        sys.executable,
        SCRIPT,
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--eval_steps",
        "2",
        "--save_steps",
        "2",
        "--disable_tqdm",
        "true",
    ]
    run = subprocess.run(command, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"trainable params: {8 * DEFAULT_D_MODEL:,}" in run.stdout  # P=8 x d_model

    results = json.loads((out / "all_results.json").read_text())
    assert {"train_loss", "eval_loss", "eval_accuracy"} <= set(results)
    config = SoftPromptConfig.from_pretrained(str(out))
    assert (config.num_virtual_tokens, config.prompt_tuning_init, config.class_labels) == (
        8,
        "CLASS_LABELS",
        ["positive", "negative"],
    )
    saved = load_file(out / "adapter_model.safetensors")["prompt_embeddings"]
    assert saved.shape == (8, DEFAULT_D_MODEL)

    base, _ = default_model_and_tokenizer()
    model = PeftModel.from_pretrained(base, str(out))
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, saved)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-2",
        "checkpoint-4",
    ]


@pytest.mark.slow
def test_local_model_and_files_with_integer_labels(script, local_model_dir, boolq_like_files, tmp_path):
    train_file, dev_file = boolq_like_files
    out = str(tmp_path / "run")
    metrics = script.main(
        [
            "--model_name_or_path",
            local_model_dir,
            "--train_file",
            train_file,
            "--validation_file",
            dev_file,
            "--input_columns",
            "question",
            "passage",
            "--target_column",
            "label",
            "--class_labels",
            "False",
            "True",
            "--num_virtual_tokens",
            "3",
            "--output_dir",
            out,
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--eval_steps",
            "2",
            "--save_steps",
            "2",
            "--predict_with_generate",
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
            "--use_cpu",
        ]
    )
    assert {"train_loss", "eval_loss", "eval_accuracy"} <= set(metrics)
    config = SoftPromptConfig.from_pretrained(out)
    assert config.class_labels == ["False", "True"] and config.base_model_name_or_path == local_model_dir
    model = AutoPeftModelForSeq2SeqLM.from_pretrained(out)  # the base comes from the recorded path
    saved = load_file(os.path.join(out, "adapter_model.safetensors"))["prompt_embeddings"]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, saved)
    assert saved.shape == (3, 64)


@pytest.mark.slow
def test_load_in_8bit_and_continue_from(script, local_model_dir, tmp_path):
    bundled = os.path.join(ROOT, "examples", "data", "tiny_text2text")
    common = [
        "--model_name_or_path",
        local_model_dir,
        "--train_file",
        os.path.join(bundled, "train.jsonl"),
        "--eval_strategy",
        "no",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--num_virtual_tokens",
        "4",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        "--use_cpu",
    ]
    first = str(tmp_path / "first")
    script.main(common + ["--output_dir", first, "--load_in_8bit"])
    saved = load_file(os.path.join(first, "adapter_model.safetensors"))["prompt_embeddings"]
    assert saved.dtype == torch.float32 and saved.shape == (4, 64)

    second = str(tmp_path / "second")
    script.main(common + ["--output_dir", second, "--continue_from", first, "--max_steps", "1"])
    config = SoftPromptConfig.from_pretrained(second)
    assert config.prompt_tuning_init == "SAVED_PROMPT" and config.init_prompt_path == first
    assert not torch.equal(
        load_file(os.path.join(second, "adapter_model.safetensors"))["prompt_embeddings"], saved
    )


def test_demo_defaults_come_first_and_yield_to_the_user(script):
    assert script.with_demo_defaults(["--model_name_or_path=x"]) == ["--model_name_or_path=x"]
    argv = script.with_demo_defaults(["--max_steps", "3"])
    assert argv[-2:] == ["--max_steps", "3"] and "--train_file" in argv
    assert "--train_file" not in script.with_demo_defaults(["--dataset_name", "super_glue"])


def test_clear_errors(script, tmp_path):
    args = script.DataArguments(target_column="label")
    with pytest.raises(ValueError, match=r"target 1 in column 'label' is not text; pass --class_labels"):
        script.text_pairs({"input": ["a"], "label": [1]}, args, None)
    assert script.text_pairs({"input": ["a"], "label": [1]}, args, ["no", "yes"]) == (["a"], ["yes"])
    with pytest.raises(ValueError, match=r"--load_in_8bit and --load_in_4bit are both set"):
        script.load_model_and_tokenizer(script.ModelArguments(load_in_8bit=True, load_in_4bit=True), str(tmp_path))
    with pytest.raises(ValueError, match="There is no dev set"):
        script.main(
            [
                "--train_file",
                os.path.join(ROOT, "examples", "data", "tiny_text2text", "train.jsonl"),
                "--output_dir",
                str(tmp_path),
                "--max_steps",
                "1",
                "--use_cpu",
            ]
        )

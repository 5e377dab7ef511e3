#!/usr/bin/env python
"""Prompt tuning of a text-to-text model with the Transformers `Seq2SeqTrainer` (Lester et al., 2021).

With no arguments it trains a soft prompt for the bundled toy sentiment task (examples/data/tiny_text2text, 32
training and 8 dev rows) on the default base model (`softprompt_ext.embedded.default_model_path()`), offline:

    python examples/train_text2text.py                                        # 60 steps, P=8: ~50 s
    python examples/train_text2text.py --max_steps 240 --num_virtual_tokens 20  # ~2-5 min

What the short run shows is the mechanics, not learning: the Trainer trains and evaluates the prompt, the
eval loss falls (7.57 -> 6.89), the adapter is saved; 60 steps are too few for the outputs to become label
words, so eval accuracy stays 0.0. The longer run reaches eval loss 0.54 and accuracy 0.625 on the 8 dev rows
(chance 0.5). Measured on a 2-core AMD EPYC without bf16 units (fp32), other jobs running: 53 s and 319 s.
For learning you can see, run `python examples/supersense.py` (README's main job).

The paper's setting, on a Hub model and dataset (an LM-adapted T5, P = 100, class-label init, the paper's
Adafactor recipe, which is the default here):

    python examples/train_text2text.py \\
        --model_name_or_path google/t5-base-lm-adapt \\
        --dataset_name super_glue --dataset_config_name boolq \\
        --input_columns question passage --target_column label --class_labels False True \\
        --output_dir boolq-prompt --predict_with_generate --metric_for_best_model accuracy

Local data: `--train_file train.jsonl --validation_file dev.jsonl` (JSON lines or CSV with an `input` and a
`target` column; rename with `--input_column/--target_column`). Every `Seq2SeqTrainingArguments` option
works (`--per_device_train_batch_size`, `--max_steps`, `--push_to_hub`, `--resume_from_checkpoint`, ...);
their defaults are the paper's (see `softprompt_ext.training.recipe.PaperTrainingArguments`). Without
`--model_name_or_path` the demo settings in `DEMO_ARGS` come first, so any option you pass overrides them.
`datasets` 4 and later run no loading scripts: a Hub dataset must be stored as data files (Parquet, JSON).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
import transformers
from accelerate import PartialState
from datasets import load_dataset
from peft import get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    DataCollatorForSeq2Seq,
    HfArgumentParser,
    Seq2SeqTrainer,
)

from softprompt_ext import SoftPromptConfig, SoftPromptInit
from softprompt_ext.adapters.model_card import update_model_card
from softprompt_ext.embedded import default_model_path
from softprompt_ext.training.recipe import PaperTrainingArguments, check_trainable_prompt, load_for_training

logger = logging.getLogger(__name__)

BUNDLED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tiny_text2text")
DEMO_ARGS = [  # the no-argument run: a short schedule sized for the small default model
    "--output_dir",
    "softprompt-demo",
    "--num_virtual_tokens",
    "8",
    "--class_labels",
    "positive",
    "negative",
    "--max_steps",
    "60",
    "--per_device_train_batch_size",
    "8",
    "--eval_steps",
    "20",
    "--save_steps",
    "20",
    "--logging_steps",
    "10",
    "--predict_with_generate",
    "true",
    "--max_target_length",
    "4",
]
DEMO_DATA = [
    "--train_file",
    os.path.join(BUNDLED, "train.jsonl"),
    "--validation_file",
    os.path.join(BUNDLED, "dev.jsonl"),
]


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub id or directory of the base model; default: softprompt_ext.embedded."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's."})
    revision: str = field(default="main", metadata={"help": "Model revision (branch, tag or commit)."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where downloaded models and data are cached."}
    )
    load_in_8bit: bool = field(
        default=False, metadata={"help": "Load the base model in 8 bits (bitsandbytes)."}
    )
    load_in_4bit: bool = field(
        default=False, metadata={"help": "Load the base model in 4 bits (bitsandbytes)."}
    )


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` Hub dataset."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration, e.g. boolq."})
    train_file: str | None = field(default=None, metadata={"help": "Local .jsonl/.json/.csv training file."})
    validation_file: str | None = field(default=None, metadata={"help": "Local .jsonl/.json/.csv dev file."})
    validation_split: str = field(default="validation", metadata={"help": "Dev split of --dataset_name."})
    input_column: str = field(default="input", metadata={"help": "Column holding the input text."})
    input_columns: list[str] | None = field(
        default=None,
        metadata={"help": "Several input columns, joined as 'col: value col: value' (no task name)."},
    )
    target_column: str = field(
        default="target", metadata={"help": "Column holding the target (text or class id)."}
    )
    max_source_length: int = field(
        default=512, metadata={"help": "Input tokens kept (the prompt comes on top)."}
    )
    max_target_length: int = field(
        default=16, metadata={"help": "Target tokens kept; also the generation length."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use only this many training examples."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many dev examples."})


@dataclass
class PromptArguments:
    num_virtual_tokens: int = field(default=100, metadata={"help": "Prompt length P (paper: 100)."})
    prompt_tuning_init: str | None = field(
        default=None,
        metadata={
            "help": "A SoftPromptInit; default CLASS_LABELS when --class_labels is given, else SAMPLE_VOCAB."
        },
    )
    class_labels: list[str] | None = field(
        default=None,
        metadata={"help": "Label strings: initialise the prompt, and name integer targets (id i -> i-th)."},
    )
    prompt_tuning_init_text: str | None = field(
        default=None, metadata={"help": "Text for --prompt_tuning_init TEXT."}
    )
    sample_vocab_size: int | None = field(
        default=None,
        metadata={"help": "Pool of sampled-vocabulary rows; default 5000 or the whole smaller vocab."},
    )
    init_seed: int | None = field(
        default=None, metadata={"help": "Seed of the prompt initialiser; default --seed."}
    )
    continue_from: str | None = field(
        default=None,
        metadata={"help": "Start from this saved adapter's prompt (softprompt_ext.load_for_training)."},
    )


class PromptCardSeq2SeqTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer` whose `push_to_hub` keeps the soft-prompt section of the model card.

    `Trainer.push_to_hub` rewrites README.md with `create_model_card` after saving, which drops the section
    the adapter's `save_pretrained` wrote; this puts it back before the upload.
    """

    def create_model_card(self, *args, **kwargs):
        super().create_model_card(*args, **kwargs)
        if self.is_world_process_zero():
            model = self.accelerator.unwrap_model(self.model)
            update_model_card(self.args.output_dir, model.peft_config[model.active_adapter])


def with_demo_defaults(argv: list[str]) -> list[str]:
    """Without a base model the demo settings come first (argparse keeps the last value of an option)."""
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    if "--model_name_or_path" in given:
        return argv
    demo = list(DEMO_ARGS)
    if not given & {"--dataset_name", "--train_file"}:
        demo += DEMO_DATA
    return demo + argv


def load_model_and_tokenizer(model_args: ModelArguments, output_dir: str):
    """(base model, tokenizer, tokenizer directory for the prompt initialiser)."""
    if model_args.load_in_8bit and model_args.load_in_4bit:
        raise ValueError("--load_in_8bit and --load_in_4bit are both set; pick one.")
    quantised = model_args.load_in_8bit or model_args.load_in_4bit
    if model_args.model_name_or_path is None:  # the embedded default, loaded like any checkpoint directory
        model_args.model_name_or_path = default_model_path()
        # a tiny model's matmuls only lose when split over threads (3x slower measured on a busy 2-core box)
        torch.set_num_threads(1)

    kwargs = dict(revision=model_args.revision, cache_dir=model_args.cache_dir)
    if quantised:
        device = f"cuda:{PartialState().local_process_index}" if torch.cuda.is_available() else "cpu"
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=model_args.load_in_8bit, load_in_4bit=model_args.load_in_4bit
        )
        kwargs["device_map"] = {"": device}  # each process keeps a whole copy (DDP)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    tokenizer_path = model_args.tokenizer_name or model_args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(
        tokenizer_path, revision=model_args.revision, cache_dir=model_args.cache_dir
    )
    return model, tokenizer, tokenizer_path


def build_prompt_model(base, tokenizer, tokenizer_path: str, prompt_args: PromptArguments, seed: int):
    if prompt_args.continue_from:
        return load_for_training(base, prompt_args.continue_from)
    init = prompt_args.prompt_tuning_init or (
        SoftPromptInit.CLASS_LABELS if prompt_args.class_labels else SoftPromptInit.SAMPLE_VOCAB
    )
    sample_vocab_size = prompt_args.sample_vocab_size
    if sample_vocab_size is None:  # the paper's 5000, or every ordinary token of a smaller vocabulary
        sample_vocab_size = min(5000, len(tokenizer) - len(set(tokenizer.all_special_ids)))
    config = SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=prompt_args.num_virtual_tokens,
        prompt_tuning_init=init,
        class_labels=prompt_args.class_labels
        if SoftPromptInit(init) == SoftPromptInit.CLASS_LABELS
        else None,
        prompt_tuning_init_text=prompt_args.prompt_tuning_init_text,
        tokenizer_name_or_path=tokenizer_path,
        sample_vocab_size=sample_vocab_size,
        init_seed=prompt_args.init_seed if prompt_args.init_seed is not None else seed,
    )
    return get_peft_model(base, config)


def load_raw_datasets(data_args: DataArguments, cache_dir: str | None) -> datasets.DatasetDict:
    if data_args.dataset_name:
        return load_dataset(data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir)
    if not data_args.train_file:
        raise ValueError("No training data: pass --dataset_name, or --train_file (and --validation_file).")
    files = {"train": data_args.train_file}
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    extension = data_args.train_file.rsplit(".", 1)[-1]
    builder = {"jsonl": "json", "json": "json", "csv": "csv"}.get(extension)
    if builder is None:
        raise ValueError(f"--train_file {data_args.train_file!r}: use a .jsonl, .json or .csv file.")
    return load_dataset(builder, data_files=files, cache_dir=cache_dir)


def text_pairs(
    batch: dict, data_args: DataArguments, class_labels: list[str] | None
) -> tuple[list[str], list[str]]:
    """Inputs and targets as strings; integer targets become `class_labels[id]` (the paper's label words)."""
    if data_args.input_columns:
        count = len(batch[data_args.input_columns[0]])
        sources = [" ".join(f"{c}: {batch[c][i]}" for c in data_args.input_columns) for i in range(count)]
    else:
        sources = [str(text) for text in batch[data_args.input_column]]
    targets = []
    for target in batch[data_args.target_column]:
        if isinstance(target, str):
            targets.append(target)
        elif class_labels is not None and 0 <= int(target) < len(class_labels):
            targets.append(class_labels[int(target)])
        else:
            raise ValueError(
                f"target {target!r} in column {data_args.target_column!r} is not text; pass --class_labels "
                "with one label string per class id (e.g. --class_labels False True for BoolQ)."
            )
    return sources, targets


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser((ModelArguments, DataArguments, PromptArguments, PaperTrainingArguments))
    argv = with_demo_defaults(sys.argv[1:] if argv is None else argv)
    model_args, data_args, prompt_args, training_args = parser.parse_args_into_dataclasses(argv)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.set_seed(training_args.seed)

    os.makedirs(training_args.output_dir, exist_ok=True)
    base, tokenizer, tokenizer_path = load_model_and_tokenizer(model_args, training_args.output_dir)
    if model_args.load_in_8bit or model_args.load_in_4bit:
        base = prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=training_args.gradient_checkpointing
        )
    model = build_prompt_model(base, tokenizer, tokenizer_path, prompt_args, training_args.seed)
    check_trainable_prompt(model)
    model.print_trainable_parameters()

    raw = load_raw_datasets(data_args, model_args.cache_dir)
    dev_split = data_args.validation_split if data_args.dataset_name else "validation"
    has_dev = dev_split in raw
    if training_args.eval_strategy != "no" and not has_dev:
        raise ValueError(
            "There is no dev set to evaluate on (and to pick the best prompt by): pass --validation_file, a "
            "dataset with a validation split (--validation_split), or --eval_strategy no."
        )

    def preprocess(batch: dict) -> dict:
        sources, targets = text_pairs(batch, data_args, prompt_args.class_labels)
        features = tokenizer(sources, max_length=data_args.max_source_length, truncation=True)
        features["labels"] = tokenizer(
            text_target=targets, max_length=data_args.max_target_length, truncation=True
        )["input_ids"]
        return features

    def prepare(split: datasets.Dataset, limit: int | None) -> datasets.Dataset:
        if limit is not None:
            split = split.select(range(min(limit, len(split))))
        with training_args.main_process_first(desc="tokenising"):
            return split.map(preprocess, batched=True, remove_columns=split.column_names, desc="Tokenising")

    train_set = prepare(raw["train"], data_args.max_train_samples)
    dev_set = prepare(raw[dev_split], data_args.max_eval_samples) if has_dev else None

    def compute_metrics(prediction) -> dict[str, float]:
        """Exact-match accuracy of the generated strings (the paper scores classification this way)."""
        predicted, labels = prediction.predictions, prediction.label_ids
        predicted = np.where(predicted < 0, tokenizer.pad_token_id, predicted)
        labels = np.where(labels < 0, tokenizer.pad_token_id, labels)
        got = tokenizer.batch_decode(predicted, skip_special_tokens=True)
        want = tokenizer.batch_decode(labels, skip_special_tokens=True)
        return {"accuracy": float(np.mean([g.strip() == w.strip() for g, w in zip(got, want, strict=True)]))}

    if training_args.generation_max_length is None:
        training_args.generation_max_length = data_args.max_target_length + 1  # + the decoder start token
    trainer = PromptCardSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=dev_set,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        processing_class=tokenizer,
        compute_metrics=compute_metrics if training_args.predict_with_generate else None,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the adapter (prompt + configs + model card) and the tokenizer
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    metrics = dict(result.metrics)
    if dev_set is not None:
        eval_metrics = trainer.evaluate()
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)
        metrics.update(eval_metrics)
    if training_args.push_to_hub:
        card = {"tags": ["prompt-tuning", "softprompt-ext"], "finetuned_from": model_args.model_name_or_path}
        if data_args.dataset_name:
            card.update(dataset_tags=data_args.dataset_name, dataset_args=data_args.dataset_config_name)
        trainer.push_to_hub(**card)
    return metrics


if __name__ == "__main__":
    main()

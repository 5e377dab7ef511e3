"""`softprompt-lm-adapt`: LM-adapt any encoder-decoder checkpoint yourself (Lester et al. 2021, section 3.3).

Prompt tuning on span-corruption T5 is unstable; 100K extra steps on the prefix-LM objective fix it. Google
released LM-adapted T5 1.1 (`lm_adapted.LM_ADAPTED`); for mT5, ByT5 or a domain model, run:

    softprompt-lm-adapt --model_name_or_path google/mt5-base --train_files corpus.txt \\
        --max_steps 100000 --output_dir mt5-base-lm-adapt
    # or --dataset_name allenai/c4 --dataset_config_name en --streaming; .txt or .jsonl files (--text_column)
    # or: accelerate launch -m softprompt_ext.training.lm_adapt ...; resume with --resume_from_checkpoint last

Design decisions
----------------
* Trainer trains, so every Trainer flag works (`--per_device_train_batch_size`, `--bf16`, `--save_steps`, ...),
  and resuming, `accelerate launch`, progress bars and loss logging come with it.
* Defaults follow the paper and T5: 100K steps (section 3.3), Adafactor at a constant 1e-3, 512 tokens each side.
* The Adafactor is T5's: each update is scaled by the parameter's RMS (Mesh TensorFlow's
  `multiply_by_parameter_scale=True`, `--adafactor_scale_parameter`, default on). Transformers' own
  `optim="adafactor"` turns that scaling off, which makes 1e-3 an absolute step: ~2% of a d_model^-0.5-scale
  weight matrix's size every step, against ~0.1% of a unit-scale embedding's. With the flag on (and
  `optim="adafactor"`), the Trainer gets T5's optimizer through `optimizer_cls_and_kwargs`, so FSDP,
  DeepSpeed and resuming build it as they build their own.
* Examples are built in `datasets.map` by `lm_objectives.LMObjective`, a pure function of (seed, document
  index), so a resumed run sees exactly the data an uninterrupted run would.
* The model is loaded in float32 whatever the checkpoint's dtype (use `--bf16` for mixed precision).
* `config.json` records `"lm_adaptation": {"objective": "prefix_lm", "steps": N, "source": ..., ...}` in the
  final checkpoint and in every `checkpoint-N`, so `lm_adapted.is_span_corruption_only` knows them as adapted.
  N includes steps the source had already recorded. `objective="span_corruption"` records
  `"continued_pretraining"` instead: such a model is still not LM-adapted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import torch
from transformers import HfArgumentParser, TrainerCallback, TrainingArguments
from transformers.trainer_utils import SchedulerType
from transformers.training_args import OptimizerNames

from ..adapters.atomic import last_complete_checkpoint
from .lm_objectives import LMObjective, Seq2SeqCollator

PROG = "softprompt-lm-adapt"
RECORD_KEYS = {"prefix_lm": "lm_adaptation", "span_corruption": "continued_pretraining"}
_FILE_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json"}


@dataclass
class LMAdaptArguments:
    """What to adapt and on which text (Trainer's own flags come from `LMAdaptTrainingArguments`)."""

    model_name_or_path: str = field(metadata={"help": "Encoder-decoder checkpoint to adapt (Hub id or directory)."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer, if not the model's own."})
    dataset_name: str | None = field(default=None, metadata={"help": "`datasets` dataset (Hub id or script)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Its configuration, e.g. 'en'."})
    dataset_split: str = field(default="train", metadata={"help": "Split of --dataset_name to train on."})
    train_files: list[str] | None = field(default=None, metadata={"help": "Local .txt or .json/.jsonl files."})
    text_column: str = field(default="text", metadata={"help": "Column holding the natural text."})
    text_sample_by: Literal["line", "paragraph", "document"] = field(
        default="line", metadata={"help": "For .txt files: one example per line, paragraph or file."}
    )
    objective: Literal["prefix_lm", "span_corruption"] = field(
        default="prefix_lm", metadata={"help": "prefix_lm = LM adaptation (paper 3.3); span_corruption = T5's."}
    )
    input_length: int = field(default=512, metadata={"help": "Most encoder tokens per example, EOS included."})
    target_length: int = field(default=512, metadata={"help": "Most decoder tokens per example, EOS included."})
    noise_density: float = field(default=0.15, metadata={"help": "span_corruption: share of corrupted tokens."})
    mean_noise_span_length: float = field(default=3.0, metadata={"help": "span_corruption: mean span length."})
    dropout_rate: float | None = field(
        default=None, metadata={"help": "T5 family: override config.dropout_rate (T5 1.1 pre-trained with 0)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (needs --max_steps)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N texts."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for datasets.map."})
    cache_dir: str | None = field(default=None, metadata={"help": "Cache directory for models and datasets."})

    def __post_init__(self) -> None:
        if bool(self.dataset_name) == bool(self.train_files):
            raise ValueError(
                f"pass exactly one of dataset_name and train_files, got dataset_name={self.dataset_name!r} and "
                f"train_files={self.train_files!r}."
            )
        for path in self.train_files or []:
            if not os.path.isfile(path):
                raise ValueError(f"train_files: {path!r} is not a file; pass existing .txt or .jsonl files.")
        if self.train_files:
            builders = {_FILE_BUILDERS.get(os.path.splitext(p)[1].lower()) for p in self.train_files}
            if None in builders or len(builders) > 1:
                raise ValueError(
                    f"train_files={self.train_files!r}: use files of one kind, .txt (one text per line) or "
                    ".json/.jsonl (one object per line with a text_column field)."
                )
            if builders == {"text"} and self.text_column != "text":
                raise ValueError(
                    f"text_column={self.text_column!r} with .txt files: their only column is 'text'; drop "
                    "--text_column or pass .jsonl files."
                )
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be >= 1, got {self.max_train_samples}.")
        LMObjective.validate_lengths(
            self.objective, self.input_length, self.target_length, self.noise_density, self.mean_noise_span_length
        )


@dataclass
class LMAdaptTrainingArguments(TrainingArguments):
    """`TrainingArguments` with LM-adaptation defaults; `output_dir` is required."""

    output_dir: str | None = field(default=None, metadata={"help": "Where the adapted checkpoint goes (required)."})
    max_steps: int = field(default=100_000, metadata={"help": "Adaptation steps (paper section 3.3: 100K)."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Constant Adafactor learning rate (T5 recipe)."})
    optim: OptimizerNames | str = field(default="adafactor", metadata={"help": "Optimizer (Trainer's names)."})
    adafactor_scale_parameter: bool = field(
        default=True,
        metadata={"help": "With optim=adafactor: scale each update by the parameter's RMS, as T5's Adafactor does "
                  "(Transformers' optim=adafactor alone does not)."},
    )
    lr_scheduler_type: SchedulerType | str = field(default="constant", metadata={"help": "Learning-rate schedule."})
    logging_steps: float = field(default=100, metadata={"help": "Log the loss every N steps."})
    logging_first_step: bool = field(default=True, metadata={"help": "Log the loss of the first step too."})
    save_steps: float = field(default=1000, metadata={"help": "Write checkpoint-N every N steps."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Examples hold only model inputs."})

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("output_dir is required: pass --output_dir DIR, where the adapted checkpoint is written.")
        super().__post_init__()


@dataclass
class LMAdaptResult:
    """What `lm_adapt` did: where the checkpoint is, how many steps ran, and Trainer's log history."""

    output_dir: str
    global_step: int
    training_loss: float
    log_history: list[dict[str, Any]]


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """`None`, a `checkpoint-N` directory, or "last"/True (the newest `checkpoint-N` in `output_dir`)."""
    if resume_from_checkpoint in (None, False, ""):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() in ("last", "latest", "true"):
        # not transformers' get_last_checkpoint: it returns a checkpoint-N the run was killed while writing
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise ValueError(
                f"resume_from_checkpoint={resume_from_checkpoint!r} but output_dir={output_dir!r} holds no "
                "checkpoint-N directory with a whole trainer_state.json; drop --resume_from_checkpoint to start "
                "afresh."
            )
        return found
    if not os.path.isdir(str(resume_from_checkpoint)):
        raise ValueError(
            f"resume_from_checkpoint={resume_from_checkpoint!r} is not a directory; pass a checkpoint-N "
            "directory written by an earlier run, or 'last'."
        )
    return str(resume_from_checkpoint)


def load_text_dataset(args: LMAdaptArguments):
    """The raw text dataset (`datasets.Dataset`, or `IterableDataset` with `streaming`)."""
    from datasets import load_dataset

    if args.train_files:
        builder = _FILE_BUILDERS[os.path.splitext(args.train_files[0])[1].lower()]
        extra = {"sample_by": args.text_sample_by} if builder == "text" else {}
        raw = load_dataset(
            builder, data_files={"train": list(args.train_files)}, split="train", streaming=args.streaming,
            cache_dir=args.cache_dir, **extra,
        )
    else:
        raw = load_dataset(
            args.dataset_name, args.dataset_config_name, split=args.dataset_split, streaming=args.streaming,
            cache_dir=args.cache_dir,
        )
    if raw.column_names is not None and args.text_column not in raw.column_names:
        raise ValueError(
            f"text_column={args.text_column!r} is not a column of the dataset (columns: {raw.column_names}); "
            "pass --text_column with the column that holds the text."
        )
    if args.max_train_samples is not None and args.streaming:
        raw = raw.take(args.max_train_samples)
    elif args.max_train_samples is not None:
        raw = raw.select(range(min(args.max_train_samples, len(raw))))
    return raw


class _RecordAdaptation(TrainerCallback):
    """Keeps `model.config.<key>` current, so every checkpoint-N and the final checkpoint say how many steps ran."""

    def __init__(self, key: str, record: dict[str, Any]):
        self.key, self.record = key, record

    def _update(self, model, state) -> None:
        if model is not None:
            setattr(model.config, self.key, {**self.record, "steps": self.record["source_steps"] + state.global_step})

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._update(model, state)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self._update(model, state)


def _read_record(directory: str | None, key: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(str(directory), "config.json"), encoding="utf-8") as handle:
            record = json.load(handle).get(key)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


# T5's Adafactor (Mesh TensorFlow defaults: multiply_by_parameter_scale=True, decay -0.8, no momentum, update
# clipping 1) in Transformers' names; the external learning rate is used as is. The embedded build's
# pretraining uses the same (scripts/embedded_build/build.py --optimizer adafactor).
T5_ADAFACTOR_KWARGS: dict[str, Any] = {"scale_parameter": True, "relative_step": False, "warmup_init": False,
                                       "decay_rate": -0.8, "beta1": None, "clip_threshold": 1.0}


def t5_adafactor(training_args: TrainingArguments) -> tuple[type, dict[str, Any]] | None:
    """T5's Adafactor (updates scaled by parameter RMS) for `Trainer(optimizer_cls_and_kwargs=...)`, or None.

    None leaves the Trainer's own choice: any `optim` other than adafactor, or
    `adafactor_scale_parameter=False` (Transformers' Adafactor: absolute steps). The other settings are
    Transformers' Adafactor defaults, which are T5's (decay -0.8, no momentum, update clipping 1).
    """
    if str(getattr(training_args.optim, "value", training_args.optim)) != "adafactor":
        return None
    if not getattr(training_args, "adafactor_scale_parameter", False):
        return None
    from transformers.optimization import Adafactor

    return Adafactor, {"lr": training_args.learning_rate, **T5_ADAFACTOR_KWARGS}


def run_lm_adaptation(
    args: LMAdaptArguments, training_args: TrainingArguments, callbacks: list[TrainerCallback] | None = None
) -> LMAdaptResult:
    """Train `args.model_name_or_path` on the objective with Trainer and save model + tokenizer to `output_dir`.

    `callbacks` go to the Trainer after the one that records the adaptation (e.g. one that sets
    `control.should_save` and `should_training_stop` to end a run early, resumable from its checkpoint).
    """
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer, Trainer

    from ..version import __version__

    output_dir = cast(str, training_args.output_dir)  # TrainingArguments.__post_init__ fills a default
    resume = resolve_resume(training_args.resume_from_checkpoint, output_dir)
    if args.streaming and training_args.max_steps <= 0:
        raise ValueError("streaming needs max_steps > 0: a streamed dataset has no length to count epochs by.")
    config = AutoConfig.from_pretrained(args.model_name_or_path, cache_dir=args.cache_dir)
    if not getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"model_name_or_path={args.model_name_or_path!r} is a {config.model_type!r} model without an encoder; "
            "LM adaptation trains encoder-decoder models (T5, mT5, ByT5, BART, ...)."
        )
    if args.dropout_rate is not None:
        config.dropout_rate = args.dropout_rate
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name or args.model_name_or_path, cache_dir=args.cache_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else config.pad_token_id
    if pad_id is None:
        raise ValueError("neither the tokenizer nor the model config defines a padding token; set tokenizer.pad_token.")
    model = AutoModelForSeq2SeqLM.from_pretrained(
        args.model_name_or_path, config=config, dtype=torch.float32, cache_dir=args.cache_dir
    )

    objective = LMObjective(
        tokenizer, objective=args.objective, input_length=args.input_length, target_length=args.target_length,
        seed=training_args.data_seed if training_args.data_seed is not None else training_args.seed,
        noise_density=args.noise_density, mean_noise_span_length=args.mean_noise_span_length,
        text_column=args.text_column,
    )
    raw = load_text_dataset(args)
    with training_args.main_process_first(desc="building LM-adaptation examples"):
        map_kwargs = {} if args.streaming else {"num_proc": args.preprocessing_num_workers, "desc": "Splitting texts"}
        train = raw.map(objective, batched=True, with_indices=True, remove_columns=raw.column_names, **map_kwargs)
    if not args.streaming and len(train) == 0:
        raise ValueError(
            f"no training example: every text has fewer than 2 tokens after tokenisation (column "
            f"{args.text_column!r}); check --text_column and the data files."
        )

    key = RECORD_KEYS[args.objective]
    previous = _read_record(resume, key) if resume else None
    if previous and "source_steps" in previous:  # resuming: keep the original source and its step count
        source, source_steps = previous.get("source"), int(previous["source_steps"])
    else:
        own = getattr(config, key, None)
        source = args.model_name_or_path
        source_steps = int(own.get("steps", 0)) if isinstance(own, dict) and own.get("objective") == args.objective else 0
    record = {
        "objective": args.objective, "steps": source_steps, "source": source, "source_steps": source_steps,
        "input_length": args.input_length, "target_length": args.target_length,
        "data": args.dataset_name or [os.path.basename(p) for p in args.train_files or []],
        "tool": f"softprompt-ext {__version__}",
    }

    trainer = Trainer(
        model=model, args=training_args, train_dataset=train, data_collator=Seq2SeqCollator(pad_id),
        processing_class=tokenizer, callbacks=[_RecordAdaptation(key, record), *(callbacks or [])],
        optimizer_cls_and_kwargs=t5_adafactor(training_args),
    )
    output = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)  # model, config.json with the record, tokenizer
    trainer.save_state()
    return LMAdaptResult(
        output_dir=output_dir, global_step=trainer.state.global_step,
        training_loss=float(output.training_loss), log_history=list(trainer.state.log_history),
    )


def lm_adapt(
    model_name_or_path: str, output_dir: str, *, callbacks: list[TrainerCallback] | None = None, **kwargs: Any
) -> LMAdaptResult:
    """LM-adapt a checkpoint from Python; `kwargs` are `LMAdaptArguments` or `TrainingArguments` fields.

        lm_adapt("google/t5-v1_1-small", "t5-small-lm", train_files=["corpus.txt"], max_steps=1000)

    `callbacks`: extra `TrainerCallback`s (see `run_lm_adaptation`).

    Returns an `LMAdaptResult`; the checkpoint in `output_dir` loads with `from_pretrained`.
    """
    data_names = {f.name for f in dataclasses.fields(LMAdaptArguments)}
    training_names = {f.name for f in dataclasses.fields(LMAdaptTrainingArguments) if f.init}
    unknown = sorted(set(kwargs) - data_names - training_names)
    if unknown:
        raise TypeError(
            f"lm_adapt() got unknown arguments {unknown}; pass LMAdaptArguments fields (train_files, "
            "input_length, ...) or TrainingArguments fields (max_steps, learning_rate, ...)."
        )
    args = LMAdaptArguments(model_name_or_path=model_name_or_path, **{k: v for k, v in kwargs.items() if k in data_names})
    training_args = LMAdaptTrainingArguments(
        output_dir=output_dir, **{k: v for k, v in kwargs.items() if k not in data_names}
    )
    return run_lm_adaptation(args, training_args, callbacks)


class _Parser(HfArgumentParser):
    """Usage errors print one line (`softprompt-lm-adapt: error: ...`) and exit with status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def main(argv: list[str] | None = None) -> int:
    """Console script `softprompt-lm-adapt` (also `python -m softprompt_ext.training.lm_adapt`); `--help` lists all flags."""
    parser = _Parser(
        (LMAdaptArguments, LMAdaptTrainingArguments),  # type: ignore[arg-type]  # dataclasses, as HfArgumentParser wants
        prog=PROG,
        description="Continue training an encoder-decoder checkpoint on the prefix-LM objective "
        "(LM adaptation, Lester et al. 2021 section 3.3) and save it for prompt tuning.",
    )
    try:
        args, training_args, unknown = parser.parse_args_into_dataclasses(
            args=argv, return_remaining_strings=True, look_for_args_file=False
        )
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    except ValueError as err:
        parser.error(str(err))
    result = run_lm_adaptation(args, training_args)
    print(f"{PROG}: wrote {result.output_dir} after {result.global_step} steps of {args.objective}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build the tiny models, tokenizers, adapter and dataset that PEFT's prompt-tuning tests load, offline.

PEFT's tests load tiny random models by Hub id (`peft-internal-testing/tiny-random-OPTForCausalLM`, ...). There
is no network here, so each one is built from a `transformers` config object with random weights (seeded from
the id, so a rebuild gives the same files) and saved into a Hugging Face cache under the same id:

    HF_HOME/hub/models--<org>--<name>/snapshots/<fake commit>/{config.json, model.safetensors, tokenizer...}
    HF_HOME/hub/models--<org>--<name>/refs/main            (and refs/<revision> where a test pins one)
    HF_HOME/datasets/<org>___<name>/default/0.0.0/<hash>/  (a prepared `datasets` cache: offline loading)

Every model gets a tokenizer trained offline with `tokenizers` (`softprompt_ext.tiny_models.build_tokenizer`,
T5 layout: 0 <pad>, 1 </s>, 2 <unk>), because PEFT's TEXT / SAMPLE_VOCAB tests load the tokenizer from the
model id. Sizes are tiny (hidden 16-32, 2 layers, vocabulary 256): the suite runs on 2 CPU cores.

Built once per HF_HOME: a stamp per repo (`HF_HOME/peft_suite_stamps/`) records the build version and the
transformers version; a repo whose stamp matches is skipped. Bump BUILD_VERSION when a spec changes.

    python scripts/peft_suite/build_models.py --hf_home .cache/peft_suite/hf/transformers-5.24.0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import zlib
from collections.abc import Callable
from typing import Any

BUILD_VERSION = 2
VOCAB = 256  # model vocabulary; the tokenizer has fewer entries (trained pieces + 8 sentinels), all below it
TOKENIZER_VOCAB = 200  # asked of the trainer; the corpus yields fewer pieces
NUM_SENTINELS = 8


# ---------------------------------------------------------------------------------------------- model specs
def _t5():
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration, T5Config(
        vocab_size=VOCAB, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_decoder_layers=2, num_heads=2,
        relative_attention_num_buckets=8, dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def _bart():
    from transformers import BartConfig, BartForConditionalGeneration

    return BartForConditionalGeneration, BartConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=512,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, bos_token_id=1,
        eos_token_id=1, decoder_start_token_id=1, forced_eos_token_id=None,
    )


def _opt():
    from transformers import OPTConfig, OPTForCausalLM

    return OPTForCausalLM, OPTConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
        word_embed_proj_dim=16, max_position_embeddings=512, dropout=0.0, pad_token_id=0, bos_token_id=1,
        eos_token_id=1,
    )


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel, GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=2, n_head=2, n_positions=512, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )


def _gptj():
    from transformers import GPTJConfig, GPTJForCausalLM

    return GPTJForCausalLM, GPTJConfig(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=512, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )


def _llama_config(**extra: Any):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=1, **extra,
    )


def _llama():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM, _llama_config()


def _llama_seq_cls():
    from transformers import LlamaForSequenceClassification

    return LlamaForSequenceClassification, _llama_config(num_labels=2)


def _qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return Qwen2ForCausalLM, Qwen2Config(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )


def _gemma3():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return Gemma3ForCausalLM, Gemma3TextConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, query_pre_attn_scalar=8, sliding_window=64,
        max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )


def _mistral():
    from transformers import MistralConfig, MistralForCausalLM

    return MistralForCausalLM, MistralConfig(
        vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=512, sliding_window=None, pad_token_id=0, bos_token_id=1,
        eos_token_id=1,
    )


def _bert():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification, BertConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
        num_labels=2,
    )


def _roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    return RobertaForSequenceClassification, RobertaConfig(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=520, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=0,
        bos_token_id=1, eos_token_id=1, num_labels=2,
    )


MODELS: dict[str, Callable[[], tuple[type, Any]]] = {
    # test_encoder_decoder_models.py
    "peft-internal-testing/tiny-random-T5ForConditionalGeneration-calibrated": _t5,
    "peft-internal-testing/tiny-random-BartForConditionalGeneration": _bart,
    # test_decoder_models.py (PEFT_DECODER_MODELS_TO_TEST, SMALL_GRID_MODELS)
    "peft-internal-testing/tiny-random-OPTForCausalLM": _opt,
    "peft-internal-testing/tiny-random-GPT2LMHeadModel": _gpt2,
    "peft-internal-testing/tiny-random-GPTJForCausalLM": _gptj,
    "trl-internal-testing/tiny-random-LlamaForCausalLM": _llama,
    "peft-internal-testing/tiny-random-LlamaForCausalLM": _llama,  # the same model's id in PEFT >= 0.22
    "peft-internal-testing/tiny-dummy-qwen2": _qwen2,
    "hf-internal-testing/tiny-random-Gemma3ForCausalLM": _gemma3,
    "hf-internal-testing/tiny-random-gpt2": _gpt2,
    "hf-internal-testing/tiny-random-MistralForCausalLM": _mistral,
    # test_seq_classifier.py
    "peft-internal-testing/tiny-random-BertForSequenceClassification": _bert,
    "peft-internal-testing/tiny-random-RobertaForSequenceClassification": _roberta,
    "trl-internal-testing/tiny-LlamaForSequenceClassification-3.2": _llama_seq_cls,
    "peft-internal-testing/tiny-LlamaForSequenceClassification-3.2": _llama_seq_cls,  # its id in PEFT >= 0.22
}
# test_config.py loads this LoRA adapter config at revision "test" (never its weights)
LORA_ADAPTERS = {"peft-internal-testing/tiny-opt-lora-revision": ("test", "hf-internal-testing/tiny-random-OPTForCausalLM")}
ABSENT_ADAPTER_FILES = ("softprompt_config.json", "softprompt_digest.json")
# test_decoder_models.py::test_prompt_learning_with_gradient_checkpointing trains 3 steps on it
DATASETS = {"ybelkada/english_quotes_copy": "quote"}


# ---------------------------------------------------------------------------------------------- cache layout
def fake_commit(repo_id: str) -> str:
    """A stable 40-hex "commit" per repo and build version (what refs/main points at)."""
    return hashlib.sha1(f"softprompt-ext peft_suite {BUILD_VERSION} {repo_id}".encode()).hexdigest()


def _repo_dir(hf_home: str, repo_id: str, kind: str = "models") -> str:
    return os.path.join(hf_home, "hub", f"{kind}--{repo_id.replace('/', '--')}")


def _stamp_path(hf_home: str, repo_id: str) -> str:
    return os.path.join(hf_home, "peft_suite_stamps", repo_id.replace("/", "--") + ".json")


def _stamp() -> dict[str, Any]:
    import transformers

    return {"build_version": BUILD_VERSION, "transformers": transformers.__version__}


def _is_built(hf_home: str, repo_id: str) -> bool:
    try:
        with open(_stamp_path(hf_home, repo_id)) as f:
            return json.load(f) == _stamp()
    except (OSError, ValueError):
        return False


def _mark_built(hf_home: str, repo_id: str) -> None:
    path = _stamp_path(hf_home, repo_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(_stamp(), f)


def _publish(hf_home: str, repo_id: str, build: Callable[[str], None], revisions: tuple[str, ...] = ("main",)) -> None:
    """Run `build(directory)` in a staging folder, then move it into place as the repo's only snapshot."""
    repo = _repo_dir(hf_home, repo_id)
    commit = fake_commit(repo_id)
    os.makedirs(os.path.join(hf_home, "hub"), exist_ok=True)
    staging = tempfile.mkdtemp(dir=os.path.join(hf_home, "hub"), prefix=".staging-")
    try:
        snapshot = os.path.join(staging, "snapshots", commit)
        os.makedirs(snapshot)
        build(snapshot)
        os.makedirs(os.path.join(staging, "refs"))
        for revision in revisions:
            with open(os.path.join(staging, "refs", revision), "w") as f:
                f.write(commit)
        shutil.rmtree(repo, ignore_errors=True)
        os.replace(staging, repo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _seed(repo_id: str) -> int:
    return zlib.crc32(repo_id.encode())


def _tokenizer():
    """The repo's offline tokenizer (`build_tokenizer`), with its trained vocabulary put in a canonical order.

    Unigram training breaks ties between equally likely pieces differently from run to run (two one-letter
    pieces swap ids); ordering the pieces by (score rounded to 3 decimals, text) makes rebuilds byte-identical.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from softprompt_ext.tiny_models import SPECIALS, build_tokenizer

    trained = build_tokenizer(vocab_size=TOKENIZER_VOCAB, num_sentinels=NUM_SENTINELS)
    data = json.loads(trained.backend_tokenizer.to_str())
    vocab = data["model"]["vocab"]
    head, rest = vocab[: len(SPECIALS)], vocab[len(SPECIALS) :]
    scores = sorted((round(score, 3) for _, score in rest), reverse=True)
    pieces = [piece for piece, _ in sorted(rest, key=lambda entry: (-round(entry[1], 3), entry[0]))]
    data["model"]["vocab"] = head + [[piece, score] for piece, score in zip(pieces, scores, strict=True)]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(data)),
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=[f"<extra_id_{i}>" for i in range(NUM_SENTINELS)],  # as build_tokenizer
    )


def build_model(hf_home: str, repo_id: str, tokenizer) -> None:
    import torch

    model_class, config = MODELS[repo_id]()

    def build(snapshot: str) -> None:
        torch.manual_seed(_seed(repo_id))
        model = model_class(config).eval()
        model.save_pretrained(snapshot)
        tokenizer.save_pretrained(snapshot)

    _publish(hf_home, repo_id, build)


def build_lora_adapter(hf_home: str, repo_id: str) -> None:
    from peft import LoraConfig

    revision, base = LORA_ADAPTERS[repo_id]

    def build(snapshot: str) -> None:
        LoraConfig(base_model_name_or_path=base, task_type="CAUSAL_LM", r=8, target_modules=["q_proj", "v_proj"]).save_pretrained(snapshot)

    _publish(hf_home, repo_id, build, revisions=("main", revision))
    # what an online load leaves in the cache when the Hub answers 404: huggingface_hub records the absent file
    # under .no_exist/<commit>/, and an offline reader then knows the repo lacks it (softprompt_ext's reader
    # asks for its record and digest next to adapter_config.json; a plain LoRA repo has neither)
    no_exist = os.path.join(_repo_dir(hf_home, repo_id), ".no_exist", fake_commit(repo_id))
    os.makedirs(no_exist, exist_ok=True)
    for name in ABSENT_ADAPTER_FILES:
        open(os.path.join(no_exist, name), "w").close()


def build_dataset(hf_home: str, repo_id: str, column: str) -> None:
    """A prepared `datasets` cache (what `load_dataset` reads when the Hub is offline) with one train split."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.packaged_modules.parquet.parquet import Parquet

    from softprompt_ext.tiny_models import _CORPUS

    namespace, name = repo_id.split("/")
    target = os.path.join(hf_home, "datasets", f"{namespace}___{name}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [line for line in _CORPUS if line] * 2  # 42 short sentences: 3 steps of batch 4, with room
        pq.write_table(pa.table({column: rows, "author": ["anonymous"] * len(rows)}), os.path.join(tmp, "train.parquet"))
        builder = Parquet(
            cache_dir=os.path.join(tmp, "cache"), dataset_name=name, config_name="default",
            data_files={"train": os.path.join(tmp, "train.parquet")}, hash="0" * 16,
        )
        builder.download_and_prepare()
        # the builder names its folder after the data files (default-<hash>); the offline loader looks up
        # <namespace>___<name>/default/<version>/<hash>
        version_dir = os.path.dirname(builder.cache_dir)
        staged = os.path.join(tmp, "staged")
        shutil.copytree(version_dir, os.path.join(staged, "default", os.path.basename(version_dir)),
                        ignore=shutil.ignore_patterns("*.lock"))
        shutil.rmtree(target, ignore_errors=True)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(staged, target)


def build_all(hf_home: str, verbose: bool = True) -> list[str]:
    """Build whatever is missing or stale under `hf_home`; returns the ids built."""
    hf_home = os.path.abspath(hf_home)
    built = []
    tokenizer = None
    for repo_id in MODELS:
        if not _is_built(hf_home, repo_id):
            tokenizer = tokenizer or _tokenizer()
            build_model(hf_home, repo_id, tokenizer)
            _mark_built(hf_home, repo_id)
            built.append(repo_id)
    for repo_id in LORA_ADAPTERS:
        if not _is_built(hf_home, repo_id):
            build_lora_adapter(hf_home, repo_id)
            _mark_built(hf_home, repo_id)
            built.append(repo_id)
    for repo_id, column in DATASETS.items():
        if not _is_built(hf_home, repo_id):
            build_dataset(hf_home, repo_id, column)
            _mark_built(hf_home, repo_id)
            built.append(repo_id)
    if verbose:
        total = len(MODELS) + len(LORA_ADAPTERS) + len(DATASETS)
        print(f"peft_suite: {len(built)} of {total} tiny repos built under {hf_home}"
              + (f" ({', '.join(built)})" if built else " (all cached)"), flush=True)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf_home", required=True, help="the HF_HOME to fill (its hub/ and datasets/ caches)")
    args = parser.parse_args(argv)
    # the build itself must not reach for the Hub either
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HOME"] = os.path.abspath(args.hf_home)
    build_all(args.hf_home)
    return 0


if __name__ == "__main__":
    sys.exit(main())

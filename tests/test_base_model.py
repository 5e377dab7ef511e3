"""The base model's input embedding table, read on its own from a checkpoint (`analysis/base_model.py`)."""

from __future__ import annotations

import pytest
import torch

from softprompt_ext import tiny_models
from softprompt_ext.analysis.base_model import _table_from_checkpoint, embedding_table


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    """A tiny T5 saved to a directory, and its input embedding table `[V, H]`."""
    base_dir = str(tmp_path_factory.mktemp("base_model") / "base")
    model = tiny_models.build_t5(len(tokenizer))
    model.save_pretrained(base_dir)
    return {"base": base_dir, "table": model.get_input_embeddings().weight.detach().clone()}


def test_embedding_table_reads_only_the_embedding_tensor(saved, tokenizer, tmp_path):
    assert torch.equal(_table_from_checkpoint(saved["base"], "SEQ_2_SEQ_LM"), saved["table"])
    llama = tiny_models.build_llama(len(tokenizer))
    llama.save_pretrained(tmp_path / "llama", max_shard_size="20KB")  # sharded, key 'model.embed_tokens.weight'
    assert (tmp_path / "llama" / "model.safetensors.index.json").exists()
    expected = llama.get_input_embeddings().weight
    assert torch.equal(_table_from_checkpoint(str(tmp_path / "llama"), "CAUSAL_LM"), expected)
    assert torch.equal(embedding_table(str(tmp_path / "llama")), expected)  # bare LlamaModel: prefix differs


def test_embedding_table_names_a_model_that_cannot_be_read(tmp_path):
    with pytest.raises(ValueError, match=r"base model '.*' has no readable config.json"):
        embedding_table(str(tmp_path))

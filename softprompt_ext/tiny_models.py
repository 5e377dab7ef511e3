"""Tiny models and a tokenizer built in-process, for tests, examples and benchmarks that must run offline.

A supported public helper, not only a test fixture: the examples (`examples/quickstart.py`,
`examples/superglue.py`) and the guides' code blocks build their offline stand-ins with it, so it ships in the
wheel and its signatures stay stable (API page: docs/api/embedded.md).

Nothing here downloads: the tokenizer is a SentencePiece-style Unigram model trained with `tokenizers` on a
few sentences shipped in this file, and the models are built from config objects with random weights.
Ids follow T5's layout: 0 = `<pad>`, 1 = `</s>`, 2 = `<unk>`, sentinels `<extra_id_i>` at the end.
"""

from __future__ import annotations

import os

import torch

_CORPUS = """\
the movie was a great success and the audience loved it
a terrible film with a weak story and bad acting
this is a positive review of a wonderful book
this is a negative review of a boring play
is the sky blue on a clear day true or false
the cat sat on the mat near the warm fire
dogs and cats are animals that live with people
an apple is a fruit and a carrot is a vegetable
the hammer is a tool used to drive a nail
the premise entails the hypothesis when it must be true
the two sentences are paraphrases of each other
the question asks whether the passage supports the answer
a ship sails across the sea to a distant port
the teacher explained the lesson to the students
rain falls from dark clouds in the cold season
she wrote a letter to her friend in the city
the river flows past the old mill and the bridge
people eat bread, rice and fish for dinner
the engine of the car needs oil and fuel
birds build nests in trees during the spring
entailment contradiction neutral equivalent duplicate
""".splitlines()

SPECIALS = ["<pad>", "</s>", "<unk>"]


def build_tokenizer(vocab_size: int = 200, num_sentinels: int = 8, corpus: list[str] | None = None):
    """A T5-like fast tokenizer (Unigram, EOS appended, sentinels last) trained offline.

    Returns a `transformers.PreTrainedTokenizerFast`; `save_pretrained` it for `tokenizer_name_or_path`.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>")
    tok.train_from_iterator(corpus or _CORPUS * 4, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    sentinels = [f"<extra_id_{i}>" for i in range(num_sentinels)]
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=sentinels,
    )


def build_t5(
    vocab_size: int,
    d_model: int = 16,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
    *,
    d_kv: int | None = None,
    d_ff: int | None = None,
    dropout_rate: float = 0.0,
):
    """A T5 1.1-shaped model (GeGLU, relative attention, no decoder-output scaling) with random weights.

    `tie_word_embeddings=False` is how T5 1.1 checkpoints say "don't scale decoder outputs"; Transformers 5
    reads it that way (`scale_decoder_outputs=False`) and ties `lm_head` to `shared` regardless.
    `d_kv` (per-head size) defaults to `d_model // num_heads` and `d_ff` to `2 * d_model`; T5 1.1-small is
    `build_t5(32128, 512, 8, 6, d_kv=64, d_ff=1024)`.
    """
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    config = T5Config(  # type: ignore[call-arg]  # PretrainedConfig kwargs (tie_word_embeddings, ...)
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=d_kv or d_model // num_heads,
        d_ff=d_ff or 2 * d_model,
        num_layers=num_layers,
        num_decoder_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=dropout_rate,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(config).eval()


def build_llama(vocab_size: int, d_model: int = 16, num_layers: int = 2, num_heads: int = 2, seed: int = 0):
    """A Llama-shaped causal LM with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


def build_gpt2(vocab_size: int, d_model: int = 16, num_layers: int = 2, num_heads: int = 2, seed: int = 0):
    """A GPT-2-shaped causal LM with random weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=d_model,
        n_layer=num_layers,
        n_head=num_heads,
        n_positions=256,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return GPT2LMHeadModel(config).eval()


def build_opt(vocab_size: int, d_model: int = 16, num_layers: int = 2, num_heads: int = 2, seed: int = 0):
    """An OPT-shaped causal LM with random weights (learned positions counted from the attention mask)."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    config = OPTConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        word_embed_proj_dim=d_model,
        ffn_dim=2 * d_model,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=256,
        dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return OPTForCausalLM(config).eval()


def build_bloom(vocab_size: int, d_model: int = 16, num_layers: int = 2, num_heads: int = 2, seed: int = 0):
    """A Bloom-shaped causal LM with random weights (ALiBi position bias)."""
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(seed)
    config = BloomConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        n_layer=num_layers,
        n_head=num_heads,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
    )
    return BloomForCausalLM(config).eval()


def fill_rows_with_index(model) -> torch.Tensor:
    """Set input-embedding row i to the value i in every dimension (exact expectations in tests)."""
    table = model.get_input_embeddings().weight
    with torch.no_grad():
        table.copy_(torch.arange(table.shape[0], dtype=table.dtype).unsqueeze(1).expand_as(table))
    return table


def save_tokenizer(tokenizer, directory: str) -> str:
    """Save a tokenizer and return the directory (for `tokenizer_name_or_path`)."""
    os.makedirs(directory, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return directory

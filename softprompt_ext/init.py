"""Prompt initialisers (paper section 3.2, Figure 3b), as small composable `from_*` factories.

Every factory returns an `Initializer`: a function `(num_rows, generator) -> Tensor[num_rows, H]` (float32).
They compose the way the official implementation does: class labels (or text, or a saved prompt) fill
the first rows and a fallback initialiser -- sampled vocabulary -- fills the rest:

    fallback = from_sampled_vocab(table, pool)
    init = from_rows(label_rows(table, label_ids), fallback)
    prompt = init(100, generator)                                   # [100, H]

`build_initial_prompt` turns a `SoftPromptConfig` into that composition; this module holds no PEFT code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

from .special_tokens import excluded_token_ids

if TYPE_CHECKING:
    from .config import SoftPromptConfig

Initializer = Callable[[int, "torch.Generator | None"], torch.Tensor]


# ---------------------------------------------------------------------------------------------- factories
def from_uniform(dim: int, init_range: float) -> Initializer:
    """Rows drawn from U(-init_range, init_range) (paper section 3.2, "random uniform")."""

    def init(num_rows: int, generator: torch.Generator | None) -> torch.Tensor:
        out = torch.empty(num_rows, dim, dtype=torch.float32)  # [P, H]
        return out.uniform_(-init_range, init_range, generator=generator)

    return init


def from_normal(dim: int) -> Initializer:
    """Rows drawn from N(0, 1): what PEFT's `RANDOM` (a fresh `nn.Embedding`) gives."""

    def init(num_rows: int, generator: torch.Generator | None) -> torch.Tensor:
        return torch.randn(num_rows, dim, generator=generator, dtype=torch.float32)  # [P, H]

    return init


def from_sampled_vocab(table: torch.Tensor, pool: torch.Tensor) -> Initializer:
    """Copies of the embeddings of tokens drawn uniformly from `pool` (paper section 3.2, "sampled vocab").

    Args:
        table: the model's input embedding table `[V, H]`.
        pool: candidate token ids `[N]`, e.g. from `vocab_pool`.

    Draws are without replacement; only when more rows than `N` are asked for is the pool drawn with
    replacement (as the official implementation does).
    """
    if pool.numel() == 0:
        raise ValueError("the sample_vocab pool is empty; raise sample_vocab_size.")

    def init(num_rows: int, generator: torch.Generator | None) -> torch.Tensor:
        if num_rows <= pool.numel():
            picks = torch.randperm(pool.numel(), generator=generator)[:num_rows]  # [P]
        else:
            picks = torch.randint(0, pool.numel(), (num_rows,), generator=generator)  # [P]
        return table[pool[picks].to(table.device)].detach().float().cpu()  # [P, H]

    return init


def from_rows(rows: torch.Tensor, fallback: Initializer) -> Initializer:
    """The given rows `[K, H]` first (truncated to P), then `fallback` for the remaining P - K rows."""

    def init(num_rows: int, generator: torch.Generator | None) -> torch.Tensor:
        head = rows[:num_rows].float()  # [min(K, P), H]
        if head.shape[0] == num_rows:
            return head.clone()
        tail = fallback(num_rows - head.shape[0], generator)  # [P - K, H]
        return torch.cat([head, tail], dim=0)  # [P, H]

    return init


# ---------------------------------------------------------------------------------------------- row makers
def label_rows(table: torch.Tensor, label_token_ids: Sequence[Sequence[int]], labels: Sequence[str] = ()) -> torch.Tensor:
    """Row i = mean of the embeddings of label i's sub-tokens (paper section 3.2, "class label").

    Args:
        table: input embedding table `[V, H]`.
        label_token_ids: per label, its token ids without special tokens.
        labels: the label strings, for error messages.
    Returns:
        `[L, H]` float32.
    """
    rows = []
    for i, ids in enumerate(label_token_ids):
        name = repr(labels[i]) if i < len(labels) else f"#{i}"
        if len(ids) == 0:
            raise ValueError(
                f"class_labels[{i}]={name} tokenises to no tokens; use a label the tokenizer can spell."
            )
        check_ids(ids, table.shape[0], f"class_labels[{i}]={name}")
        rows.append(table[torch.as_tensor(list(ids), device=table.device)].detach().float().mean(dim=0).cpu())  # [H]
    return torch.stack(rows)  # [L, H]


def token_rows(table: torch.Tensor, token_ids: Sequence[int], what: str = "prompt_tuning_init_text") -> torch.Tensor:
    """One embedding per token id (paper section 3.2 / PEFT `TEXT`): `[T, H]` float32."""
    if len(token_ids) == 0:
        raise ValueError(f"{what} tokenises to no tokens; pass a non-empty text.")
    check_ids(token_ids, table.shape[0], what)
    return table[torch.as_tensor(list(token_ids), device=table.device)].detach().float().cpu()  # [T, H]


def check_ids(token_ids: Sequence[int], num_rows: int, what: str) -> None:
    """Raise when an id is outside the embedding table (a tokenizer that does not match the model)."""
    bad = [int(t) for t in token_ids if not 0 <= int(t) < num_rows]
    if bad:
        raise ValueError(
            f"{what} has token ids {bad} but the model's embedding table has {num_rows} rows: the tokenizer "
            "does not match the model; pass the base model's own tokenizer as tokenizer_name_or_path."
        )


# ---------------------------------------------------------------------------------------------- vocab pool
def usable_tokens(num_rows: int, excluded_ids: set[int] | frozenset[int] = frozenset()) -> int:
    """How many ids of a `num_rows`-row table are not special: the largest possible sampled-vocab pool."""
    return num_rows - len({i for i in excluded_ids if 0 <= i < num_rows})


def default_pool_size(num_rows: int, excluded_ids: set[int] | frozenset[int] = frozenset()) -> int:
    """`sample_vocab_size=None`: the paper's 5,000 (section 3.2), or every usable token when there are fewer.

    The official implementation does the same: it warns and samples the whole table when the requested
    population is larger than the vocabulary.
    """
    from .config import PAPER_SAMPLE_VOCAB_SIZE

    available = usable_tokens(num_rows, excluded_ids)
    if available < PAPER_SAMPLE_VOCAB_SIZE:
        warnings.warn(
            f"sample_vocab_size is not set and the paper's {PAPER_SAMPLE_VOCAB_SIZE} most common tokens exceed the "
            f"{available} usable tokens of this vocabulary ({num_rows} rows, {num_rows - available} special): "
            f"sampling from all {available}, as the official implementation does. Pass sample_vocab_size=N to "
            "choose the pool.",
            stacklevel=5,
        )
    return min(PAPER_SAMPLE_VOCAB_SIZE, available)


def vocab_pool(num_rows: int, sample_vocab_size: int, excluded_ids: set[int] | frozenset[int] = frozenset()) -> torch.Tensor:
    """Ids of the `sample_vocab_size` most common tokens: the lowest ids not in `excluded_ids`.

    SentencePiece vocabularies (T5) are ordered by likelihood and BPE vocabularies (GPT-2, Llama) by merge
    order, so "lowest ids" is "most common" for both (paper section 3.2 uses T5's first 5,000 ids).

    Args:
        num_rows: rows of the embedding table V (ids >= V are never drawn).
        sample_vocab_size: N.
        excluded_ids: special and byte-fallback ids.
    Returns:
        `[N]` int64.
    """
    available = usable_tokens(num_rows, excluded_ids)
    if sample_vocab_size > available:
        raise ValueError(
            f"sample_vocab_size={sample_vocab_size} is larger than the {available} usable tokens of the "
            f"vocabulary ({num_rows} rows, {num_rows - available} special); pass sample_vocab_size <= {available}."
        )
    keep = torch.ones(num_rows, dtype=torch.bool)
    if excluded_ids:
        keep[torch.as_tensor([i for i in excluded_ids if 0 <= i < num_rows], dtype=torch.long)] = False
    return torch.nonzero(keep).flatten()[:sample_vocab_size]  # [N]


# ---------------------------------------------------------------------------------------------- from a config
def build_initial_prompt(config: SoftPromptConfig, table: torch.Tensor) -> torch.Tensor:
    """The initial prompt `[P, H]` (float32) that `config` asks for, from the model's embedding table `[V, H]`."""
    from .config import SoftPromptInit

    init = SoftPromptInit(config.prompt_tuning_init)
    num_rows, dim = config.num_virtual_tokens, table.shape[1]
    generator = None
    if config.init_seed is not None:
        generator = torch.Generator().manual_seed(config.init_seed)

    if init == SoftPromptInit.RANDOM:
        return from_normal(dim)(num_rows, generator)
    if init == SoftPromptInit.RANDOM_UNIFORM:
        return from_uniform(dim, config.init_range)(num_rows, generator)

    tokenizer = _load_tokenizer(config, required=init in (SoftPromptInit.CLASS_LABELS, SoftPromptInit.TEXT))
    excluded = excluded_token_ids(tokenizer) if tokenizer is not None else set()

    def sampled(rows: int, gen: torch.Generator | None) -> torch.Tensor:
        # built on demand: a prompt filled entirely by labels or text needs no valid sample_vocab_size
        size = config.sample_vocab_size
        if size is None:
            size = default_pool_size(table.shape[0], excluded)
        pool = vocab_pool(table.shape[0], size, excluded)  # [N]
        return from_sampled_vocab(table, pool)(rows, gen)

    if init == SoftPromptInit.SAMPLE_VOCAB:
        return sampled(num_rows, generator)
    if init == SoftPromptInit.CLASS_LABELS:
        labels = list(config.class_labels or [])
        if len(labels) > num_rows:
            warnings.warn(
                f"{len(labels)} class_labels but num_virtual_tokens={num_rows}: only the first {num_rows} labels "
                f"initialise the prompt, {labels[num_rows:]} are dropped (as in the paper's code).",
                stacklevel=4,
            )
            labels = labels[:num_rows]
        ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
        return from_rows(label_rows(table, ids, labels), sampled)(num_rows, generator)
    if init == SoftPromptInit.TEXT:
        ids = tokenizer(config.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
        return from_rows(token_rows(table, ids), sampled)(num_rows, generator)
    if init == SoftPromptInit.SAVED_PROMPT:
        from .adapters.reader import read_prompt

        assert config.init_prompt_path is not None  # checked by SoftPromptConfig
        saved = read_prompt(config.init_prompt_path)  # [P', H']
        if saved.shape[1] != dim:
            raise ValueError(
                f"init_prompt_path={config.init_prompt_path!r} holds a prompt of d_model {saved.shape[1]} but the "
                f"model's d_model is {dim}; a prompt only transfers between models of the same width."
            )
        return from_rows(saved, sampled)(num_rows, generator)
    raise AssertionError(f"unhandled init {init}")  # SoftPromptConfig validated the value


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "tokenizer.model", "vocab.json")


def _load_tokenizer(config: SoftPromptConfig, required: bool):
    """The tokenizer named by the config (or, for sampling, the base model's); None if optional and missing."""
    import os

    from transformers import AutoTokenizer

    source = config.tokenizer_name_or_path or (None if required else config.base_model_name_or_path)
    if not source:
        return None
    # transformers builds an *empty* tokenizer from a model directory without tokenizer files; refuse that
    if os.path.isdir(source) and not any(os.path.isfile(os.path.join(source, f)) for f in _TOKENIZER_FILES):
        if required:
            raise ValueError(
                f"tokenizer_name_or_path={source!r} is a directory without tokenizer files "
                f"({', '.join(_TOKENIZER_FILES)}); pass the directory the tokenizer was saved to."
            )
        return None
    kwargs = dict(config.tokenizer_kwargs or {})
    kwargs.pop("trust_remote_code", None)  # a config from a stranger must not run code
    if not config.tokenizer_name_or_path:
        # the optional fallback to the base model's tokenizer never waits on the network: cache or local only
        kwargs["local_files_only"] = True
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except Exception as exc:
        if required:
            raise ValueError(
                f"tokenizer_name_or_path={source!r} could not be loaded ({type(exc).__name__}: {exc}); "
                "pass a local tokenizer directory or a Hub id that is reachable or cached."
            ) from exc
        warnings.warn(
            f"No tokenizer could be loaded from {source!r} ({type(exc).__name__}); SAMPLE_VOCAB draws from ids "
            f"0..sample_vocab_size-1 with special tokens included, as the official implementation does. Pass "
            "tokenizer_name_or_path to exclude them.",
            stacklevel=4,
        )
        return None

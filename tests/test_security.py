"""Security review, round 2: each finding's regression test, one section per finding.

Each test failed before its fix; the section names the finding and what it used to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings

import pytest
import torch
from helpers import free_port
from peft import PeftModel, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file

from softprompt_ext import SoftPromptConfig
from softprompt_ext.adapters.validation import AdapterError, load_adapter_safely, validate_adapter

P, H, LABELS = 4, 16, 3
CFG, W = "adapter_config.json", "adapter_model.safetensors"


def seq_cls_model(num_labels: int = LABELS):
    """A GPT-2 sequence classifier: PEFT adds its `score` head to modules_to_save for SEQ_CLS."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=64, n_embd=H, n_layer=1, n_head=2, n_positions=64, num_labels=num_labels,
                        pad_token_id=0, bos_token_id=1, eos_token_id=1)
    return GPT2ForSequenceClassification(config).eval()


def save_seq_cls(directory, plain: bool = False) -> str:
    kwargs = dict(task_type="SEQ_CLS", num_virtual_tokens=P)
    config = PromptTuningConfig(**kwargs) if plain else SoftPromptConfig(prompt_tuning_init="RANDOM_UNIFORM", **kwargs)
    get_peft_model(seq_cls_model(), config).save_pretrained(str(directory))
    return str(directory)


def edit_tensors(directory, **changes):
    """Replace (tensor) or delete (None) tensors of the adapter's safetensors file."""
    path = os.path.join(directory, W)
    tensors = load_file(path)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    save_file(tensors, path)


def edit_config(directory, **changes):
    path = os.path.join(directory, CFG)
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    config.update(changes)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(config, handle)


# ------------------------------------------------------------------ finding 1: modules_to_save tensors
SCORE = "base_model.score.weight"
MODULE_CASES = [  # (id, replacement of the score head's weight, message)
    ("wrong-shape", torch.zeros(LABELS + 1, H), r"'base_model\.score\.weight' has shape \[4, 16\] but the base model's is \[3, 16\]"),
    ("int-dtype", torch.ones(LABELS, H, dtype=torch.int64), r"'base_model\.score\.weight' has dtype (I64|torch\.int64) but"),
    ("bool-dtype", torch.ones(LABELS, H, dtype=torch.bool), r"'base_model\.score\.weight' has dtype (BOOL|torch\.bool) but"),
    ("nan", torch.full((LABELS, H), float("nan")), r"'base_model\.score\.weight' holds NaN or inf"),
    ("f64-overflow", torch.full((LABELS, H), 1e300, dtype=torch.float64), r"'base_model\.score\.weight' holds NaN or inf"),
]


@pytest.mark.parametrize("case", MODULE_CASES, ids=[c[0] for c in MODULE_CASES])
def test_modules_to_save_tensor_checked_against_the_base_module(tmp_path, case):
    """Before: a wrong-shape head was torch's RuntimeError, an int/bool/NaN/1e300 head loaded silently (cast)."""
    _, tensor, pattern = case
    directory = save_seq_cls(tmp_path / "a")
    edit_tensors(directory, **{SCORE.replace(".", "__"): tensor})
    weights = os.path.join(directory, W)
    with pytest.raises(AdapterError, match=pattern) as info:
        validate_adapter(directory, seq_cls_model())
    assert weights in str(info.value)
    with pytest.raises(AdapterError, match=pattern):
        load_adapter_safely(seq_cls_model(), directory)
    base = seq_cls_model()
    before = base.score.weight.detach().clone()
    with pytest.raises(AdapterError, match=pattern):  # PEFT's own loader: the hook before load_state_dict
        PeftModel.from_pretrained(base, directory)
    torch.testing.assert_close(base.score.weight, before, rtol=0, atol=0)
    validate_adapter(directory)  # without a base model only the pairing is unknown: no error


def test_tensor_under_a_declared_name_the_base_model_lacks(tmp_path):
    directory = save_seq_cls(tmp_path / "a")  # declares ['classifier', 'score']; GPT-2 has no classifier
    edit_tensors(directory, base_model__classifier__weight=torch.zeros(LABELS, H))
    with pytest.raises(AdapterError, match=r"'base_model\.classifier\.weight' names no tensor of the base model"):
        validate_adapter(directory, seq_cls_model())
    with pytest.raises(AdapterError, match=r"\['base_model\.classifier\.weight'\] besides 'prompt_embeddings'"):
        PeftModel.from_pretrained(seq_cls_model(), directory)


def test_undeclared_base_tensor_refused_when_peft_is_given_the_config(tmp_path, make_model):
    """`PeftModel.from_pretrained(..., config=...)` never calls the config loader (so never validate_adapter):
    before, an `lm_head.weight` in the file overwrote the frozen base model."""
    config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM")
    directory = str(tmp_path / "a")
    get_peft_model(make_model("gpt2"), config).save_pretrained(directory)
    edit_tensors(directory, base_model__lm_head__weight=torch.zeros_like(make_model("gpt2").lm_head.weight))
    base = make_model("gpt2")
    before = base.lm_head.weight.detach().clone()
    loaded_config = SoftPromptConfig.from_pretrained(directory)
    with pytest.raises(AdapterError, match=r"\['base_model\.lm_head\.weight'\] besides 'prompt_embeddings'.*frozen base"):
        PeftModel.from_pretrained(base, directory, config=loaded_config)
    torch.testing.assert_close(base.lm_head.weight, before, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["gpt2", "t5"])
def test_declared_module_missing_from_the_file_is_one_clear_error(tmp_path, make_model, kind):
    """Finding 9: `modules_to_save=['lm_head']` with a prompt-only file passed `check`, then a bare KeyError."""
    task = "CAUSAL_LM" if kind == "gpt2" else "SEQ_2_SEQ_LM"
    config = SoftPromptConfig(task_type=task, num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM")
    directory = str(tmp_path / "a")
    get_peft_model(make_model(kind), config).save_pretrained(directory)
    edit_config(directory, modules_to_save=["lm_head"])
    pattern = r"adapter_model\.safetensors: adapter_config\.json declares modules_to_save \['lm_head'\].*no tensor \['base_model\.lm_head\.weight'\]"
    with pytest.raises(AdapterError, match=pattern):
        validate_adapter(directory, make_model(kind))
    with pytest.raises(AdapterError, match=pattern):
        load_adapter_safely(make_model(kind), directory)
    validate_adapter(directory)  # without the model it cannot be known (SEQ_CLS declares heads a model may lack)


def test_pin_peft_from_pretrained_keyerror_for_a_missing_declared_module(tmp_path, make_model):
    """PEFT's config loader slot gets no model, and PEFT raises the KeyError before any hook that sees the model
    (`set_peft_model_state_dict` maps wrapper keys first): PeftModel.from_pretrained keeps PEFT's KeyError, which
    is why load_adapter_safely exists. Turns red if PEFT starts reporting it itself."""
    config = SoftPromptConfig(task_type="CAUSAL_LM", num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM")
    directory = str(tmp_path / "a")
    get_peft_model(make_model("gpt2"), config).save_pretrained(directory)
    edit_config(directory, modules_to_save=["lm_head"])
    with pytest.raises(KeyError, match="base_model.lm_head.weight"):
        PeftModel.from_pretrained(make_model("gpt2"), directory)


@pytest.mark.parametrize("plain", [False, True], ids=["softprompt", "plain-peft"])
def test_seq_cls_adapter_with_its_head_loads_without_warning(tmp_path, plain):
    """Before: every SEQ_CLS load warned "ignoring tensors ['base_model.score.weight']" (they were loaded)."""
    directory = save_seq_cls(tmp_path / "a", plain=plain)
    saved = load_file(os.path.join(directory, W))[SCORE]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validate_adapter(directory)
        validate_adapter(directory, seq_cls_model())
        models = [PeftModel.from_pretrained(seq_cls_model(), directory), load_adapter_safely(seq_cls_model(), directory)]
    ours = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert ours == []
    for model in models:
        head = model.base_model.score.modules_to_save["default"].weight
        torch.testing.assert_close(head, saved, rtol=0, atol=0)


def test_modules_to_save_check_accepts_a_float32_head_on_a_bfloat16_model(tmp_path):
    directory = save_seq_cls(tmp_path / "a")
    base = seq_cls_model().to(torch.bfloat16)
    validate_adapter(directory, base)
    load_adapter_safely(base, directory)


def test_modules_to_save_names_follow_the_peft_rule(make_model):
    """Pins `_set_trainable`'s rule (`key.endswith(name)`) and the saved key form `base_model.<module>.<tensor>`."""
    from softprompt_ext.peft_internals import modules_to_save_tensors

    model = seq_cls_model()
    assert sorted(modules_to_save_tensors(model, ["classifier", "score"])) == [SCORE]
    peft_model = get_peft_model(seq_cls_model(), PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=P))
    assert sorted(modules_to_save_tensors(peft_model, ["score"])) == [SCORE]  # the wrapper's original module
    assert modules_to_save_tensors(model, None) == {}
    assert re.fullmatch(r"base_model\.score\.modules_to_save\.default\.weight", next(
        k for k, _ in peft_model.named_parameters() if "modules_to_save" in k))


# ------------------------------------------------------------------ finding 2 + 9: the atomic save
def t5_adapter_model(make_model, value: float):
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM")
    model = get_peft_model(make_model("t5"), config)
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.fill_(value)
    return model


def prompt_value(directory) -> float:
    values = validate_adapter(directory).prompt.unique()
    assert values.numel() == 1
    return float(values[0])


def tree(root) -> dict[str, bytes]:
    """Every file under `root` with its bytes (to prove a directory untouched)."""
    files = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as handle:
                files[os.path.relpath(path, root)] = handle.read()
    return files


def test_a_users_own_old_backup_is_never_deleted(tmp_path, make_model):
    """Before: recover_adapter_dir (run first by every save) deleted any sst2.old next to sst2."""
    from softprompt_ext.adapters.atomic import recover_adapter_dir, save_adapter_atomically

    directory = tmp_path / "sst2"
    save_adapter_atomically(t5_adapter_model(make_model, 1.0), directory)
    backup = tmp_path / "sst2.old"
    shutil.copytree(directory, backup)
    (backup / "notes.txt").write_text("my backup\n")
    before = tree(backup)
    assert recover_adapter_dir(directory) == "nothing"
    with pytest.raises(ValueError, match=r"sst2\.old exists and was not left by save_adapter_atomically.*left alone"):
        save_adapter_atomically(t5_adapter_model(make_model, 2.0), directory)
    assert tree(backup) == before and prompt_value(directory) == 1.0
    assert sorted(os.listdir(tmp_path)) == ["sst2", "sst2.old"]


def test_a_users_old_is_not_renamed_into_place(tmp_path, make_model):
    """Before: with sst2 missing, the user's sst2.old was renamed to sst2, then swapped away and deleted."""
    from softprompt_ext.adapters.atomic import recover_adapter_dir, save_adapter_atomically

    backup = tmp_path / "sst2.old"
    t5_adapter_model(make_model, 1.0).save_pretrained(str(backup))
    before = tree(backup)
    directory = tmp_path / "sst2"
    assert recover_adapter_dir(directory) == "nothing" and not directory.exists()
    with pytest.raises(AdapterError) as info:
        validate_adapter(directory)
    assert "interrupted" not in str(info.value)  # not ours: no hint to "recover" it
    save_adapter_atomically(t5_adapter_model(make_model, 2.0), directory)
    assert prompt_value(directory) == 2.0 and tree(backup) == before


def test_a_users_directory_named_like_staging_is_kept(tmp_path, make_model):
    from softprompt_ext.adapters.atomic import save_adapter_atomically

    mine = tmp_path / ".sst2.tmp-mine"
    mine.mkdir()
    (mine / "data.txt").write_text("mine\n")
    save_adapter_atomically(t5_adapter_model(make_model, 1.0), tmp_path / "sst2")
    save_adapter_atomically(t5_adapter_model(make_model, 2.0), tmp_path / "sst2")
    assert (mine / "data.txt").read_text() == "mine\n"
    assert sorted(os.listdir(tmp_path)) == [".sst2.tmp-mine", "sst2"]


def test_a_symlinked_adapter_directory_is_followed(tmp_path, make_model):
    """Before: the first save renamed the link itself, then failed in rmtree(link.old); later saves broke."""
    from softprompt_ext.adapters.atomic import save_adapter_atomically

    target = tmp_path / "store" / "sst2-v1"
    t5_adapter_model(make_model, 1.0).save_pretrained(str(target))
    link = tmp_path / "sst2"
    link.symlink_to(target, target_is_directory=True)
    for value in (2.0, 3.0, 4.0):
        assert save_adapter_atomically(t5_adapter_model(make_model, value), link) == str(target)
        assert link.is_symlink() and os.readlink(link) == str(target) and prompt_value(link) == value
    assert sorted(os.listdir(tmp_path)) == ["sst2", "store"] and os.listdir(tmp_path / "store") == ["sst2-v1"]


def test_the_atomic_save_writes_a_digest_of_every_adapter_file(tmp_path, make_model):
    import hashlib

    from softprompt_ext.adapters.atomic import DIGEST_NAME, MARK_NAME, save_adapter_atomically

    directory = tmp_path / "a"
    for value in (1.0, 2.0):
        save_adapter_atomically(t5_adapter_model(make_model, value), directory)
    record = json.loads((directory / DIGEST_NAME).read_text())
    names = sorted(os.listdir(directory))
    assert MARK_NAME not in names and sorted(record["files"]) == [CFG, W, "softprompt_config.json"]
    for name, digest in record["files"].items():
        assert hashlib.sha256((directory / name).read_bytes()).hexdigest() == digest
    assert prompt_value(directory) == 2.0


def put_other_weights(directory, value: float):
    """A valid prompt of other values: what a save_pretrained over the adapter, killed after the weights, leaves."""
    save_file({"prompt_embeddings": torch.full((P, H), value)}, os.path.join(directory, W))


MIXED = r"the directory mixes files of two saves.*save_adapter_atomically.*delete softprompt_digest\.json"


def test_a_mixed_adapter_is_refused_on_every_read_path(tmp_path, make_model):
    """Before: new weights beside the old config loaded silently (finding 7: 16 of 50 kills, 1 of 524 loads)."""
    from softprompt_ext.adapters.atomic import save_adapter_atomically
    from softprompt_ext.adapters.reader import read_prompt

    directory = str(tmp_path / "a")
    save_adapter_atomically(t5_adapter_model(make_model, 1.0), directory)
    put_other_weights(directory, 5.0)
    pattern = r"adapter_model\.safetensors: its sha256 differs from the one .*softprompt_digest\.json recorded.*" + MIXED
    with pytest.raises(AdapterError, match=pattern):
        validate_adapter(directory)
    with pytest.raises(AdapterError, match=pattern):
        load_adapter_safely(make_model("t5"), directory)
    with pytest.raises(AdapterError, match=pattern):
        PeftModel.from_pretrained(make_model("t5"), directory)
    with pytest.raises(AdapterError, match=pattern):
        read_prompt(directory)
    with pytest.raises(AdapterError, match=pattern):
        get_peft_model(make_model("t5"), SoftPromptConfig.continue_from(directory))
    os.remove(os.path.join(directory, "softprompt_digest.json"))  # the documented way to accept it
    assert prompt_value(directory) == 5.0


def test_a_file_missing_or_added_since_the_atomic_save_is_refused(tmp_path, make_model):
    from softprompt_ext.adapters.atomic import save_adapter_atomically

    directory = str(tmp_path / "a")
    save_adapter_atomically(t5_adapter_model(make_model, 1.0), directory)
    os.remove(os.path.join(directory, "softprompt_config.json"))
    with pytest.raises(AdapterError, match=r"softprompt_config\.json: missing, but .* lists it: " + MIXED):
        validate_adapter(directory)
    plain = str(tmp_path / "plain")
    save_adapter_atomically(
        get_peft_model(make_model("t5"), PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P)), plain
    )
    validate_adapter(plain)
    with open(os.path.join(plain, "softprompt_config.json"), "w", encoding="utf-8") as handle:
        json.dump({"format_version": 1}, handle)
    with pytest.raises(AdapterError, match=r"softprompt_config\.json: not among the files .* lists: " + MIXED):
        validate_adapter(plain)


def test_peft_save_pretrained_over_an_atomic_adapter(tmp_path, make_model):
    """A completed save_pretrained of a SoftPromptConfig model refreshes the digest last, so it loads; one
    killed before its config was written leaves the old digest, and the mix is refused."""
    from softprompt_ext.adapters.atomic import save_adapter_atomically

    directory = str(tmp_path / "a")
    save_adapter_atomically(t5_adapter_model(make_model, 1.0), directory)
    t5_adapter_model(make_model, 2.0).save_pretrained(directory)
    assert prompt_value(directory) == 2.0
    put_other_weights(directory, 3.0)  # the weights of a third save; killed before its config
    with pytest.raises(AdapterError, match=MIXED):
        validate_adapter(directory)


def test_an_adapter_without_a_digest_still_loads(tmp_path, make_model):
    directory = str(tmp_path / "a")
    t5_adapter_model(make_model, 1.0).save_pretrained(directory)
    assert "softprompt_digest.json" not in os.listdir(directory)
    put_other_weights(directory, 5.0)
    assert prompt_value(directory) == 5.0
    load_adapter_safely(make_model("t5"), directory)


# ------------------------------------------------------------------ finding 6: offline and unreachable Hub ids
HUB_CLIENT = """
import sys, time
from softprompt_ext.adapters.validation import AdapterError, validate_adapter
start = time.monotonic()
try:
    validate_adapter("someone/sst2-prompt")
    print("LOADED")
except AdapterError as exc:
    print("ERROR", exc)
print("SECONDS", time.monotonic() - start)
"""


def run_hub_client(tmp_path, **env_changes) -> tuple[str, float]:
    """Validate a Hub id in a fresh process (huggingface_hub reads HF_ENDPOINT and HF_HUB_OFFLINE at import)."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf_home"), PYTHONWARNINGS="ignore", **env_changes)
    out = subprocess.run([sys.executable, "-c", HUB_CLIENT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    return lines[0], float(lines[-1].split()[1])


def test_hub_connection_refused_fails_fast_and_says_so(tmp_path):
    """Before: 23-32 s of retries, then "No adapter_config.json at ...: it is not an adapter directory or repo"."""
    message, seconds = run_hub_client(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{free_port()}")
    assert re.search(r"ERROR 'someone/sst2-prompt' \(Hub repo, adapter_config\.json\): the Hub is unreachable "
                     r"\(ConnectError: .*Connection refused", message), message
    assert seconds < 10, seconds


@pytest.mark.slow
def test_hub_that_never_answers_fails_within_the_timeout(tmp_path):
    """Packets dropped (a server that accepts and stays silent): before, still running at 300 s."""
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nothing ever answers
        port = silent.getsockname()[1]
        message, seconds = run_hub_client(
            tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_ETAG_TIMEOUT="2"
        )
    assert "the Hub is unreachable" in message and "someone/sst2-prompt" in message, message
    assert seconds < 10, seconds


def test_hub_offline_cache_miss_says_offline(tmp_path):
    """Before: "No adapter_config.json at 'someone/sst2-prompt': it is not an adapter directory or repo"."""
    message, seconds = run_hub_client(tmp_path, HF_HUB_OFFLINE="1")
    assert re.search(r"ERROR 'someone/sst2-prompt' \(Hub repo, adapter_config\.json\): offline \(HF_HUB_OFFLINE=1"
                     r".*not in the local Hugging Face cache", message), message
    assert seconds < 10, seconds


# ------------------------------------------------------------------ finding 5: the command line
def save_raw_adapter(directory, prompt: torch.Tensor, **config) -> str:
    os.makedirs(directory, exist_ok=True)
    SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=prompt.shape[0], prompt_tuning_init="RANDOM",
                     **config).save_pretrained(str(directory))
    save_file({"prompt_embeddings": prompt.contiguous()}, os.path.join(directory, W))
    return str(directory)


def test_cli_never_writes_raw_control_characters(tmp_path, capsys):
    """Before: `info` printed an adapter's base_model_name_or_path with its ANSI escapes raw, `similar` a
    library folder's name, errors the bad value."""
    from softprompt_ext.cli import main

    evil = save_raw_adapter(tmp_path / "evil", torch.ones(P, H), base_model_name_or_path="\x1b[31mred\x1b[0m",
                            tokenizer_name_or_path="\x1b]0;title\x07tok\u202e")
    library = tmp_path / "lib"
    save_raw_adapter(library / "clear\x1b[2Jscreen\nfake line", torch.ones(P, H))
    bad = save_raw_adapter(tmp_path / "bad", torch.ones(P, H))
    edit_config(bad, peft_type="\x1b[5mBLINK")
    results = [main(argv) for argv in (["info", evil], ["check", evil], ["similar", evil, str(library)],
                                       ["check", bad], ["info", str(tmp_path / "missing\x1b[1m")])]
    out, err = capsys.readouterr()
    assert results == [0, 0, 0, 2, 2]
    for text in (out, err):
        assert all(ch.isprintable() or ch == "\n" for ch in text), repr(text)
    assert "\\x1b[31mred\\x1b[0m" in out and "\\x1b]0;title\\x07tok\\u202e" in out
    assert "clear\\x1b[2Jscreen\\nfake line" in out and "\\x1b[5mBLINK" in err and "missing\\x1b[1m" in err


@pytest.mark.slow
def test_similar_on_two_huge_prompts_is_one_clear_error(tmp_path):
    """Before: two P=100,000 prompts made max_cosine allocate a 40 GB [P, Q] matrix: a traceback (or the OOM
    killer). The child gets a 6 GB address-space limit, so the old behaviour fails safely."""
    import resource
    import subprocess
    import sys

    a = save_raw_adapter(tmp_path / "a", torch.randn(100_000, 2, generator=torch.Generator().manual_seed(0)))
    b = save_raw_adapter(tmp_path / "b", torch.randn(100_000, 2, generator=torch.Generator().manual_seed(1)))

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    out = subprocess.run([sys.executable, "-m", "softprompt_ext", "similar", a, b], preexec_fn=limit_memory,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"})
    lines = [line for line in out.stderr.splitlines() if line.startswith("softprompt")]  # the CLI's own lines
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert len(lines) == 1 and re.search(r"error: max_cosine of prompts with P=100000 and P=100000 rows needs "
                                         r"10,000,000,000 cosines.*measure='pooled_cosine'", lines[0]), lines


def test_max_cosine_in_blocks_equals_the_whole_matrix(monkeypatch):
    from softprompt_ext.analysis import similarity

    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 5, generator=generator), torch.randn(53, 5, generator=generator)
    sims = similarity.cosine_matrix(a, b)  # [37, 53]
    expected = 0.5 * (sims.max(dim=1).values.mean().item() + sims.max(dim=0).values.mean().item())
    for block in (1, 53, 60, 1000, 1 << 24):
        monkeypatch.setattr(similarity, "BLOCK_COSINES", block)
        assert similarity.max_cosine(a, b) == pytest.approx(expected, abs=1e-6)
    monkeypatch.setattr(similarity, "MAX_COSINES", 37 * 53 - 1)
    with pytest.raises(ValueError, match=r"P=37 and P=53 rows needs 1,961 cosines.*pooled_cosine"):
        similarity.max_cosine(a, b)


def test_cli_unexpected_error_is_one_line_and_exit_1(tmp_path, capsys, monkeypatch):
    """Before: any exception but ValueError/OSError/ImportError was a raw traceback (exit 1 from Python)."""
    from softprompt_ext import cli

    def broken(args):
        raise RuntimeError("boom \x1b[31m\nsecond line")

    monkeypatch.setattr(cli, "_info", broken)
    monkeypatch.delenv("SOFTPROMPT_TRACEBACK", raising=False)
    assert cli.main(["info", "x"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert re.fullmatch(r"softprompt info: internal error: RuntimeError: boom \\x1b\[31m second line \(a bug; "
                        r"rerun with SOFTPROMPT_TRACEBACK=1 .*\)\n", err), err
    monkeypatch.setenv("SOFTPROMPT_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["info", "x"])


@pytest.mark.parametrize("name", [CFG, "softprompt_config.json"])
def test_cli_deeply_nested_json_is_exit_2(tmp_path, capsys, name):
    """Finding 5's RecursionError in info/similar: the strict reader already turns it into an AdapterError."""
    from softprompt_ext.cli import main

    directory = save_raw_adapter(tmp_path / "deep", torch.ones(P, H))
    with open(os.path.join(directory, name), "w", encoding="utf-8") as handle:
        handle.write("[" * 100_000 + "]" * 100_000)
    good = save_raw_adapter(tmp_path / "good", torch.ones(P, H))
    assert [main(["info", directory]), main(["similar", good, directory]), main(["check", directory])] == [2, 2, 2]
    _, err = capsys.readouterr()
    assert err.count("nested too deeply") == 3 and "Traceback" not in err


# ------------------------------------------------------------------ finding 9: smaller items
def soft(**kwargs):
    base = dict(task_type="CAUSAL_LM", num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM")
    return SoftPromptConfig(**{**base, **kwargs})


@pytest.mark.parametrize("name, value, pattern", [
    ("peft_version", 3, r"peft_version must be of type str or None, got 3; e\.g\. peft_version='0\.21\.2'"),
    ("peft_version", ["0.21"], r"peft_version must be of type str or None, got \['0\.21'\]"),
    ("auto_mapping", 5, r"auto_mapping must be of type dict or None, got 5; e\.g\. auto_mapping=\{"),
    ("auto_mapping", {1, 2}, r"auto_mapping must be of type dict or None, got \{1, 2\}"),
    ("tokenizer_kwargs", {"x": object()}, r"cannot be saved as JSON .*not JSON serializable"),
])
def test_peft_fields_that_save_pretrained_cannot_write_are_refused_at_construction(name, value, pattern, tmp_path):
    """Before: accepted, then `save_pretrained` failed after the weights were written (22 of 3,500 fuzz cases)."""
    with pytest.raises(TypeError, match=pattern):
        soft(**{name: value})


def test_init_range_that_overflows_float32_is_refused_at_construction(make_model):
    """Before: init_range=1e39 was accepted, then get_peft_model raised torch's RuntimeError."""
    for value in (1e39, 3e38):
        with pytest.raises(ValueError, match=r"init_range=.* overflows float32, the prompt's dtype .*r <= 1\.7e\+38"):
            soft(init_range=value)
    model = get_peft_model(make_model("gpt2"), soft(init_range=1.7e38, init_seed=0))
    assert torch.isfinite(model.prompt_encoder["default"].embedding.weight).all()


@pytest.mark.parametrize("kwargs, name", [
    (dict(prompt_tuning_init="CLASS_LABELS", class_labels=["fine", "bad\ud800label"]), r"class_labels\[1\]='bad\\ud800label'"),
    (dict(prompt_tuning_init="TEXT", prompt_tuning_init_text="text \udcff"), r"prompt_tuning_init_text='text \\udcff'"),
])
def test_lone_surrogate_text_is_a_clear_error_naming_it(kwargs, name, tokenizer_dir):
    """Before: a tokenizers TypeError ("TextEncodeInput must be Union[...]") inside get_peft_model."""
    with pytest.raises(ValueError, match=name + r" is not valid Unicode text: it holds the lone surrogate"):
        soft(tokenizer_name_or_path=tokenizer_dir, **kwargs)


@pytest.mark.parametrize("adapter_kind, base_kind, pattern", [
    ("gpt2", "t5", r"task_type='CAUSAL_LM' but the base model \(T5ForConditionalGeneration\) is an encoder-decoder "
                   r"model: the prompt was trained for a decoder-only model"),
    ("t5", "gpt2", r"task_type='SEQ_2_SEQ_LM' but the base model \(GPT2LMHeadModel\) is a decoder-only model"),
])
def test_task_type_that_does_not_fit_the_base_model_is_refused(tmp_path, make_model, adapter_kind, base_kind, pattern):
    """Before: a CAUSAL_LM adapter loaded silently onto a T5 (same d_model)."""
    task = "CAUSAL_LM" if adapter_kind == "gpt2" else "SEQ_2_SEQ_LM"
    directory = str(tmp_path / "a")
    get_peft_model(make_model(adapter_kind), soft(task_type=task)).save_pretrained(directory)
    with pytest.raises(AdapterError, match=r"adapter_config\.json: " + pattern):
        validate_adapter(directory, make_model(base_kind))
    with pytest.raises(AdapterError, match=pattern):
        load_adapter_safely(make_model(base_kind), directory)
    validate_adapter(directory, make_model(adapter_kind))


@pytest.mark.parametrize("kwargs, field", [
    (dict(prompt_tuning_init="SAVED_PROMPT", init_prompt_path="x", class_labels=[f"label {i}" for i in range(100_000)]),
     "class_labels"),
    (dict(prompt_tuning_init="TEXT", prompt_tuning_init_text="word " * 400_000, tokenizer_name_or_path="tok"),
     "prompt_tuning_init_text"),
])
def test_fields_too_large_for_the_readers_json_cap_are_refused_at_construction(kwargs, field):
    """Before: 100k class labels or a 2 MB init text were saved, then the library's own 1 MiB cap refused them."""
    with pytest.raises(ValueError, match=rf"{field} \([\d,]+ bytes of JSON\) makes the saved \S+\.json [\d,]+ bytes, "
                                         r"over the 1,048,576 an adapter reader accepts"):
        soft(**kwargs)


def test_what_the_library_saves_its_reader_accepts(tmp_path, make_model):
    """The largest accepted fields still save and read back (the bound is the reader's cap, not lower)."""
    labels = [f"label {i}" for i in range(40_000)]  # about 700 KB of JSON in softprompt_config.json
    config = soft(prompt_tuning_init="SAVED_PROMPT", init_prompt_path="x", class_labels=labels)
    config.save_pretrained(str(tmp_path))
    assert SoftPromptConfig.from_pretrained(str(tmp_path)).class_labels == labels
    config.class_labels = labels * 3  # changed after construction: checked again when saving
    with pytest.raises(ValueError, match=r"class_labels .* over the 1,048,576"):
        config.save_pretrained(str(tmp_path / "again"))


def test_all_padding_causal_batch_is_a_clear_error(make_model):
    """Before: mixed_forward returned a NaN loss without error."""
    from softprompt_ext.inference.mixed_batches import mixed_forward

    model = get_peft_model(make_model("gpt2"), soft(init_seed=0), adapter_name="a")
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    pattern = r"the batch has no label tokens to compute a loss on: every label is -100 or sits on padding"
    with pytest.raises(ValueError, match=pattern):
        mixed_forward(model, ids, torch.zeros_like(ids), ["a", "a"], labels=ids)
    with pytest.raises(ValueError, match=pattern):
        mixed_forward(model, ids, torch.ones_like(ids), ["a", "a"], labels=torch.full_like(ids, -100))
    out = mixed_forward(model, ids, torch.ones_like(ids), ["a", "a"], labels=ids)
    assert torch.isfinite(out.loss)


def test_save_pretrained_without_safetensors_is_refused(tmp_path, make_model):
    """Before: safe_serialization=False wrote an adapter_model.bin adapter that the library then refused."""
    from softprompt_ext.adapters.atomic import save_adapter_atomically

    model = get_peft_model(make_model("gpt2"), soft(init_seed=0))
    pattern = (r"adapter_model\.bin: save_pretrained\(safe_serialization=False\) wrote a pickled adapter, which "
               r"softprompt_ext refuses to load .* adapter_config\.json was not written")
    with pytest.raises(ValueError, match=pattern):
        model.save_pretrained(str(tmp_path / "a"), safe_serialization=False)
    assert CFG not in os.listdir(tmp_path / "a")  # not an adapter: nothing loads it
    with pytest.raises(ValueError, match=pattern):
        save_adapter_atomically(model, tmp_path / "b", safe_serialization=False)
    assert not (tmp_path / "b").exists()
    model.save_pretrained(str(tmp_path / "c"))
    with pytest.raises(ValueError, match=pattern):  # over a safetensors adapter: the old one stays whole
        model.save_pretrained(str(tmp_path / "c"), safe_serialization=False)
    validate_adapter(str(tmp_path / "c"))

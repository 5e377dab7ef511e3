"""Untrusted adapters: every damaged or hostile adapter gives one clear error naming the file.

One table of cases, each a way to damage a freshly saved adapter, run through `validate_adapter`,
`load_adapter_safely` (which must also leave no half-loaded adapter behind) and PEFT's own
`PeftModel.from_pretrained` with softprompt_ext imported. The `via_peft` column records what the last gives:
"clear" -- already a ValueError/TypeError that says what is wrong; "fix" -- clear because
`PromptTuningConfigLoader.from_pretrained` calls `validate_adapter` before PEFT reads the weights; "peft" -- PEFT itself fails (KeyError, JSONDecodeError, ...) in `PeftConfig._get_peft_type` before any
softprompt-ext code runs, which is why `load_adapter_safely` exists.
"""

from __future__ import annotations

import json
import os
import re
import warnings

import pytest
import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model
from safetensors.torch import load_file, save_file

from softprompt_ext import SoftPromptConfig
from softprompt_ext.adapters.validation import AdapterError, load_adapter_safely, validate_adapter

P, H = 4, 16
CFG, W, REC, BIN = (
    "adapter_config.json",
    "adapter_model.safetensors",
    "softprompt_config.json",
    "adapter_model.bin",
)


def soft_config(**extra):
    return SoftPromptConfig(
        task_type="SEQ_2_SEQ_LM",
        num_virtual_tokens=P,
        prompt_tuning_init="RANDOM_UNIFORM",
        init_seed=0,
        **extra,
    )


def save_adapter(directory, make_model, plain=False, d_model=H):
    config = PromptTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P) if plain else soft_config()
    model = get_peft_model(make_model("t5", d_model=d_model), config)
    model.save_pretrained(str(directory))
    return str(directory)


# ------------------------------------------------------------------------------- ways to damage an adapter
def put_tensors(tensors):
    return lambda d: save_file(tensors, os.path.join(d, W))


def put_file(name, data: bytes):
    def mutate(d):
        with open(os.path.join(d, name), "wb") as handle:
            handle.write(data)

    return mutate


def edit_config(**changes):
    def mutate(d):
        path = os.path.join(d, CFG)
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        for key, value in changes.items():
            if value is ...:
                del config[key]
            else:
                config[key] = value
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(config, handle)

    return mutate


def pickle_only(d):
    tensors = load_file(os.path.join(d, W))
    os.remove(os.path.join(d, W))
    torch.save(tensors, os.path.join(d, BIN))


def cut_bytes(keep):
    def mutate(d):
        path = os.path.join(d, W)
        with open(path, "rb") as handle:
            data = handle.read()
        with open(path, "wb") as handle:
            handle.write(keep(data))

    return mutate


def remove(name):
    return lambda d: os.remove(os.path.join(d, name))


# (id, mutation, pattern of the message, what PeftModel.from_pretrained gives: clear / fix / peft)
CASES = [
    ("pickle-only", pickle_only, r"adapter_model\.bin is a pickle: .*can run arbitrary code", "fix"),
    ("no-weights", remove(W), r"No adapter_model\.safetensors at .*Pickled weights .* are refused", "fix"),
    (
        "truncated",
        cut_bytes(lambda b: b[:-40]),
        r"adapter_model\.safetensors: not a readable safetensors file",
        "fix",
    ),
    (
        "empty-weights",
        cut_bytes(lambda b: b""),
        r"adapter_model\.safetensors: not a readable safetensors file",
        "fix",
    ),
    (
        "garbled-header",
        cut_bytes(lambda b: b[:8] + b"{oops" + b[13:]),
        r"safetensors: not a readable safetensors",
        "fix",
    ),
    ("missing-config", remove(CFG), r"No adapter_config\.json at", "clear"),
    ("bad-json", put_file(CFG, b"{not json"), r"adapter_config\.json: not valid JSON", "peft"),
    ("not-utf8", put_file(CFG, b'{"peft_type": "\xff"}'), r"adapter_config\.json: not UTF-8 text", "peft"),
    (
        "json-list",
        put_file(CFG, b"[1, 2]"),
        r"adapter_config\.json: expected a JSON object, got a JSON list",
        "peft",
    ),
    ("no-peft-type", edit_config(peft_type=...), r"adapter_config\.json: no 'peft_type' key", "peft"),
    ("unknown-peft-type", edit_config(peft_type="FOO"), r"adapter_config\.json: peft_type='FOO'", "peft"),
    (
        "no-length",
        edit_config(num_virtual_tokens=...),
        r"adapter_config\.json: no 'num_virtual_tokens' key",
        "fix",
    ),
    (
        "length-str",
        edit_config(num_virtual_tokens="4"),
        r"num_virtual_tokens='4' has type str, expected int",
        "clear",
    ),
    (
        "length-negative",
        edit_config(num_virtual_tokens=-1),
        r"num_virtual_tokens.*-1.* must be >= 1",
        "clear",
    ),
    ("length-bool", edit_config(num_virtual_tokens=True), r"num_virtual_tokens=True has type bool", "clear"),
    (
        "token-dim-str",
        edit_config(token_dim="16"),
        r"token_dim='16' has type str, expected int or null",
        "fix",
    ),
    (
        "bad-task-type",
        edit_config(task_type="BOGUS"),
        r"adapter_config\.json.*Invalid task type: 'BOGUS'",
        "clear",
    ),
    ("bad-record", put_file(REC, b"{nope"), r"softprompt_config\.json: not valid JSON", "clear"),
    (
        "bad-record-value",
        put_file(REC, b'{"sample_vocab_size": -3}'),
        r"json: sample_vocab_size must be an int >= 1 or None",
        "clear",
    ),
    (
        "too-many-rows",
        put_tensors({"prompt_embeddings": torch.zeros(P + 1, H)}),
        r"has 5 rows but .* implies 4",
        "clear",
    ),
    (
        "wrong-width",
        put_tensors({"prompt_embeddings": torch.zeros(P, 2 * H)}),
        r"width 32 but .* token_dim=16",
        "clear",
    ),
    (
        "3-d",
        put_tensors({"prompt_embeddings": torch.zeros(1, P, H)}),
        r"shape \[1, 4, 16\], expected 2 dimensions",
        "clear",
    ),
    (
        "int-dtype",
        put_tensors({"prompt_embeddings": torch.ones(P, H, dtype=torch.int64)}),
        r"dtype I64; a prompt is floating",
        "fix",
    ),
    (
        "bool-dtype",
        put_tensors({"prompt_embeddings": torch.ones(P, H, dtype=torch.bool)}),
        r"dtype BOOL",
        "fix",
    ),
    (
        "complex-dtype",
        put_tensors({"prompt_embeddings": torch.ones(P, H, dtype=torch.complex64)}),
        r"dtype C64",
        "fix",
    ),
    (
        "nan",
        put_tensors({"prompt_embeddings": torch.full((P, H), float("nan"))}),
        r"64 of 64 prompt values are NaN or inf",
        "clear",
    ),
    (
        "inf",
        put_tensors({"prompt_embeddings": torch.tensor([[float("inf")] + [0.0] * (H - 1)] * P)}),
        r"4 of 64 .* NaN or inf",
        "clear",
    ),
    (
        "wrong-key",
        put_tensors({"foo": torch.zeros(P, H)}),
        r"holds \['foo'\] but no 'prompt_embeddings'",
        "clear",
    ),
    ("no-tensors", put_tensors({}), r"holds \[\] but no 'prompt_embeddings'", "clear"),
]
CLEAR_VIA_PEFT = {  # what PeftModel.from_pretrained says today for the "clear" cases (core messages)
    "missing-config": r"Can't find 'adapter_config\.json'",
    "length-str": r"num_virtual_tokens must be an int, got '4'",
    "length-negative": r"num_virtual_tokens must be >= 1, got -1",
    "length-bool": r"num_virtual_tokens must be an int, got True",
    "bad-task-type": r"Invalid task type: 'BOGUS'",
    "bad-record": r"softprompt_config\.json: not valid JSON",
    "bad-record-value": r"sample_vocab_size must be an int >= 1 or None, got -3",
    "too-many-rows": r"the saved prompt has 5 rows",
    "wrong-width": r"the saved prompt has shape \(4, 32\)",
    "3-d": r"the saved prompt has shape \(1, 4, 16\)",
    "nan": r"NaN or inf",
    "inf": r"NaN or inf",
    "wrong-key": r"hold \['foo'\] but no 'prompt_embeddings'",
    "no-tensors": r"hold \[\] but no 'prompt_embeddings'",
}
IDS = [case[0] for case in CASES]


@pytest.fixture
def damaged(tmp_path, make_model, request):
    """A saved SoftPromptConfig adapter with the case's mutation applied; returns (directory, case)."""
    case = request.param
    directory = save_adapter(tmp_path / "adapter", make_model)
    case[1](directory)
    return directory, case


@pytest.mark.parametrize("damaged", CASES, ids=IDS, indirect=True)
def test_validate_adapter_names_file_and_problem(damaged, make_model):
    directory, (_, _, pattern, _) = damaged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AdapterError, match=pattern) as info:
            validate_adapter(directory, make_model("t5"))
    assert isinstance(info.value, ValueError)
    assert directory in str(info.value)  # the file (or directory) is named


@pytest.mark.parametrize("damaged", CASES, ids=IDS, indirect=True)
def test_load_adapter_safely_refuses_and_leaves_no_half_adapter(damaged, make_model):
    directory, (_, _, pattern, _) = damaged
    model = get_peft_model(make_model("t5"), soft_config())
    before = model.prompt_encoder["default"].embedding.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(AdapterError, match=pattern):
            load_adapter_safely(model, directory, adapter_name="other")
        with pytest.raises(AdapterError, match=pattern):
            load_adapter_safely(make_model("t5"), directory)
    assert list(model.peft_config) == ["default"] and list(model.prompt_encoder) == ["default"]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, before, rtol=0, atol=0)


def via_peft_cases(kind):
    return [pytest.param(case, id=case[0]) for case in CASES if case[3] == kind]


@pytest.mark.parametrize("damaged", via_peft_cases("clear"), indirect=True)
def test_peft_from_pretrained_already_clear(damaged, make_model):
    directory, (name, _, pattern, _) = damaged
    with pytest.raises((ValueError, TypeError), match=f"{CLEAR_VIA_PEFT[name]}|{pattern}"):
        PeftModel.from_pretrained(make_model("t5"), directory)


@pytest.mark.parametrize("damaged", via_peft_cases("fix"), indirect=True)
def test_peft_from_pretrained_after_loader_fix(damaged, make_model):
    directory, (_, _, pattern, _) = damaged
    with pytest.raises(AdapterError, match=pattern):
        PeftModel.from_pretrained(make_model("t5"), directory)


@pytest.mark.parametrize("damaged", via_peft_cases("peft"), indirect=True)
def test_peft_from_pretrained_fails_in_peft_before_softprompt_code(damaged, make_model):
    """Pins PEFT 0.21's `_get_peft_type`: it fails before the registry; only load_adapter_safely helps."""
    directory, _ = damaged
    with pytest.raises((KeyError, ValueError, TypeError)):
        PeftModel.from_pretrained(make_model("t5"), directory)


# ------------------------------------------------------------------------------- cases outside the table
def test_valid_softprompt_adapter_loads_exactly(tmp_path, make_model):
    directory = save_adapter(tmp_path / "a", make_model)
    saved = load_file(os.path.join(directory, W))["prompt_embeddings"]
    report = validate_adapter(directory, make_model("t5"))
    assert isinstance(report.config, SoftPromptConfig) and report.d_model == H
    torch.testing.assert_close(report.prompt, saved, rtol=0, atol=0)
    model = load_adapter_safely(make_model("t5"), directory)
    assert isinstance(model, PeftModel)
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, saved, rtol=0, atol=0)


def test_half_precision_prompt_is_accepted(tmp_path, make_model):
    directory = save_adapter(tmp_path / "a", make_model)
    half = torch.linspace(-1, 1, P * H).view(P, H).to(torch.bfloat16)
    put_tensors({"prompt_embeddings": half})(directory)
    model = load_adapter_safely(make_model("t5"), directory)
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, half.float(), rtol=0, atol=0)


def test_plain_peft_adapter_validated_with_two_submodules(tmp_path, make_model):
    directory = save_adapter(tmp_path / "plain", make_model, plain=True)
    report = validate_adapter(directory, make_model("t5"))
    assert type(report.config) is PromptTuningConfig and tuple(report.prompt.shape) == (2 * P, H)
    put_tensors({"prompt_embeddings": torch.zeros(P, H)})(directory)  # a SoftPromptConfig-sized prompt
    with pytest.raises(AdapterError, match=r"has 4 rows but adapter_config\.json implies 8"):
        validate_adapter(directory)


@pytest.mark.parametrize("plain", [False, True], ids=["softprompt", "plain-peft"])
def test_adapter_for_another_d_model(tmp_path, make_model, plain):
    directory = save_adapter(tmp_path / "wide", make_model, plain=plain, d_model=2 * H)
    pattern = r"shape \((4|8), 32\) \(rows, d_model\) but the base model's d_model is 16"
    with pytest.raises(AdapterError, match=pattern):
        validate_adapter(directory, make_model("t5"))
    with pytest.raises(AdapterError, match=pattern):
        load_adapter_safely(make_model("t5"), directory)
    validate_adapter(directory)  # alone the adapter is fine: only the pairing is wrong


def test_peft_from_pretrained_plain_adapter_for_another_d_model(tmp_path, make_model):
    directory = save_adapter(tmp_path / "wide", make_model, plain=True, d_model=2 * H)
    with pytest.raises(ValueError, match="d_model"):
        PeftModel.from_pretrained(make_model("t5"), directory)  # today: loads, then fails at forward


@pytest.mark.parametrize("name", ["payload", "base_model.model.lm_head.weight", "base_model.encoder.block.0.layer.0.SelfAttention.q.weight"])
def test_extra_tensors_are_refused_naming_the_tensor(tmp_path, make_model, name):
    # PEFT loads every tensor of the file into the model (strict=False): an undeclared base-model tensor would
    # overwrite the frozen model. Before the one strict reader this only warned and loaded.
    directory = save_adapter(tmp_path / "a", make_model)
    put_tensors({"prompt_embeddings": torch.ones(P, H), name: torch.zeros(H, H)})(directory)
    with pytest.raises(AdapterError, match=rf"holds tensor\(s\) \[{re.escape(repr(name))}\] besides 'prompt_embeddings'"):
        validate_adapter(directory)


def test_oversized_config_refused_before_parsing(tmp_path, make_model):
    directory = save_adapter(tmp_path / "a", make_model)
    put_file(CFG, b'{"peft_type": "PROMPT_TUNING", "x": "' + b"a" * (1 << 20) + b'"}')(directory)
    with pytest.raises(AdapterError, match=r"adapter_config\.json: \d+ bytes; .* refused"):
        validate_adapter(directory)


def test_deeply_nested_config_refused(tmp_path, make_model):
    directory = save_adapter(tmp_path / "a", make_model)
    put_file(CFG, b"[" * 100_000 + b"]" * 100_000)(directory)
    with pytest.raises(AdapterError, match="nested too deeply"):
        validate_adapter(directory)


def test_no_torch_load_anywhere_in_the_package():
    import softprompt_ext

    root = os.path.dirname(softprompt_ext.__file__)
    offenders = []
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            with open(os.path.join(root, name), encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    code = line.split("#")[0]
                    if (
                        "torch.load(" in code
                        and "weights_only=True" not in code
                        and "safetensors" not in code
                    ):
                        offenders.append(f"{name}:{number}")
    assert offenders == [], f"torch.load without weights_only=True: {offenders}"


def test_pickle_only_adapter_is_never_unpickled(tmp_path, make_model):
    """A pickle that would create a file when unpickled: validating and safe loading must not create it."""
    directory = save_adapter(tmp_path / "a", make_model)
    os.remove(os.path.join(directory, W))
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import pickle

    with open(os.path.join(directory, BIN), "wb") as handle:
        pickle.dump({"prompt_embeddings": Exploit()}, handle)
    with pytest.raises(AdapterError, match="pickle"):
        validate_adapter(directory)
    with pytest.raises(AdapterError, match="pickle"):
        load_adapter_safely(make_model("t5"), directory)
    assert not marker.exists()


def test_bad_arguments(make_model):
    with pytest.raises(TypeError, match="path_or_repo must be an adapter directory"):
        validate_adapter(3)
    with pytest.raises(TypeError, match="base_model must be a torch model"):
        validate_adapter("x", base_model="t5")


def test_adapter_name_taken(tmp_path, make_model):
    directory = save_adapter(tmp_path / "a", make_model)
    model = get_peft_model(make_model("t5"), soft_config())
    with pytest.raises(ValueError, match="adapter_name='default' is already loaded"):
        load_adapter_safely(model, directory)
    load_adapter_safely(model, directory, adapter_name="second")
    assert sorted(model.peft_config) == ["default", "second"]

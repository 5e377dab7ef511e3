"""The one strict reader of adapter files (`adapters/reader.py`): every path that reads an adapter gets its checks.

Before the one reader, `continue_from`, `SAVED_PROMPT`, `load_for_training`, `info`/`inspect`/`similar` read
with a loose reader (no size cap, every tensor read, no finiteness check) -- each case below names the path.
"""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import save_file

from softprompt_ext import AdapterError, SoftPromptConfig, load_for_training, validate_adapter
from softprompt_ext.adapters.reader import MAX_JSON_BYTES, read_adapter_json, read_prompt
from softprompt_ext.analysis.readout import adapter_info
from softprompt_ext.prompt_tensor import load_prompt

P, H = 4, 16


def saved(tmp_path, make_model, name="a"):
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=P, prompt_tuning_init="RANDOM_UNIFORM",
                              init_seed=0)
    directory = str(tmp_path / name)
    get_peft_model(make_model("t5"), config).save_pretrained(directory)
    return directory


def with_prompt(directory, prompt: torch.Tensor) -> str:
    save_file({"prompt_embeddings": prompt}, os.path.join(directory, "adapter_model.safetensors"))
    return directory


BAD_PROMPTS = {
    "nan": (torch.full((P, H), float("nan")), r"NaN or inf in float32"),
    "float64 1e300": (torch.full((P, H), 1e300, dtype=torch.float64), r"NaN or inf in float32"),  # inf once cast
    "int8": (torch.ones(P, H, dtype=torch.int8), r"has dtype I8; a prompt is floating point"),
    "bool": (torch.ones(P, H, dtype=torch.bool), r"has dtype BOOL; a prompt is floating point"),
}

PATHS = {
    "validate_adapter": lambda d, make_model: validate_adapter(d),
    "continue_from (SAVED_PROMPT)": lambda d, make_model: get_peft_model(
        make_model("t5"), SoftPromptConfig.continue_from(d)),
    "load_for_training": lambda d, make_model: load_for_training(make_model("t5"), d),
    "info": lambda d, make_model: adapter_info(d),
    "inspect / similar (load_prompt)": lambda d, make_model: load_prompt(d),
}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bad", BAD_PROMPTS)
def test_every_read_path_refuses_a_bad_prompt(tmp_path, make_model, path, bad):
    prompt, message = BAD_PROMPTS[bad]
    directory = with_prompt(saved(tmp_path, make_model), prompt)
    with pytest.raises(AdapterError, match=message):
        PATHS[path](directory, make_model)


@pytest.mark.parametrize("path", PATHS)
def test_every_read_path_refuses_an_oversized_config(tmp_path, make_model, path):
    directory = saved(tmp_path, make_model)
    with open(os.path.join(directory, "adapter_config.json"), "w") as handle:
        json.dump({"peft_type": "PROMPT_TUNING", "pad": "x" * MAX_JSON_BYTES}, handle)
    with pytest.raises(AdapterError, match=r"adapter_config\.json: \d+ bytes; .* refused"):
        PATHS[path](directory, make_model)


def test_a_finite_float64_prompt_is_read_as_float32(tmp_path, make_model):
    prompt = torch.linspace(-1, 1, P * H, dtype=torch.float64).view(P, H)
    directory = with_prompt(saved(tmp_path, make_model), prompt)
    out = read_prompt(directory)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, prompt.float())


def test_width_is_checked_from_the_header_before_the_data(tmp_path):
    # a sparse file whose header promises a [4, 50_000_000] float32 tensor (800 MB): refused on the header,
    # without reading (or allocating) the body -- the 12 KB "memory bomb" of the security review
    header = json.dumps({"prompt_embeddings": {"dtype": "F32", "shape": [4, 50_000_000],
                                               "data_offsets": [0, 4 * 4 * 50_000_000]}}).encode()
    path = tmp_path / "bomb.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(header)) + header)
        handle.truncate(8 + len(header) + 4 * 4 * 50_000_000)  # sparse: no data on disk
    with pytest.raises(AdapterError, match=r"the base model's d_model is 16"):
        read_prompt(str(path), d_model=16)
    with pytest.raises(AdapterError, match=r"has 4 rows but adapter_config\.json implies 8"):
        read_prompt(str(path), expected_rows=8)


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", r"not UTF-8 text"),
    (b"[" * 100_000 + b"]" * 100_000, r"nested too deeply"),
    (b"[1, 2]", r"expected a JSON object, got a JSON list"),
    (b"{no", r"not valid JSON"),
])
def test_json_guards(tmp_path, make_model, content, message):
    directory = saved(tmp_path, make_model)
    with open(os.path.join(directory, "softprompt_config.json"), "wb") as handle:
        handle.write(content)
    with pytest.raises(AdapterError, match=message):
        read_adapter_json(directory, "softprompt_config.json")


def test_an_adapter_path_that_is_a_file_is_named(tmp_path):
    path = tmp_path / "adapter_config.json"
    path.write_text("{}")
    with pytest.raises(AdapterError, match=r"is a file; pass the adapter's directory"):
        read_adapter_json(str(path))


def test_what_the_library_saves_reads_back(tmp_path, make_model):
    directory = saved(tmp_path, make_model)
    assert read_adapter_json(directory)["peft_type"] == "PROMPT_TUNING"
    assert read_prompt(directory, expected_rows=P, token_dim=H, d_model=H).shape == (P, H)

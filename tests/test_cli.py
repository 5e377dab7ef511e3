"""The `softprompt` command line: the real entry point in subprocesses, plus argument handling in-process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForSeq2SeqLM

from softprompt_ext import SoftPromptConfig, tiny_models
from softprompt_ext.analysis.similarity import max_cosine
from softprompt_ext.cli import main

CAT, SEA, EOS, SENTINEL = 75, 68, 1, 170  # '▁cat', '▁sea', '</s>', '<extra_id_2>' of the test tokenizer
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The CLI's own lines start with its program name ("softprompt inspect: error: ..."). Whatever else a third-party
# import writes to stderr (bitsandbytes logs kernel look-ups on some CPUs; the wording changes between releases)
# is not the CLI's output, so no test here depends on it.
OWN_PREFIX = "softprompt"


def save_adapter(directory, prompt: torch.Tensor) -> str:
    os.makedirs(directory, exist_ok=True)
    SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=prompt.shape[0], prompt_tuning_init="RANDOM").save_pretrained(
        str(directory)
    )
    save_file({"prompt_embeddings": prompt.contiguous()}, os.path.join(directory, "adapter_model.safetensors"))
    return str(directory)


@pytest.fixture(scope="module")
def files(tokenizer, tmp_path_factory):
    """Base model + tokenizer on disk, an adapter whose rows are '▁cat', '▁sea', '</s>', '<extra_id_2>', a
    library of two more adapters, one of another d_model, and one with a damaged adapter_config.json."""
    root = tmp_path_factory.mktemp("cli")
    base = str(root / "base")
    tiny_models.build_t5(len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=4, prompt_tuning_init="CLASS_LABELS",
                              class_labels=["cat", "sea"], tokenizer_name_or_path=base, sample_vocab_size=50)
    model = get_peft_model(AutoModelForSeq2SeqLM.from_pretrained(base), config)
    table = model.get_base_model().get_input_embeddings().weight.detach()
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight[2:] = table[[EOS, SENTINEL]]
    adapter = str(root / "adapter")
    model.save_pretrained(adapter)
    prompt = model.prompt_encoder["default"].embedding.weight.detach().clone()
    library = str(root / "library")
    save_adapter(os.path.join(library, "close"), prompt[:2] * 3)  # two rows of the target, scaled
    save_adapter(os.path.join(library, "far"), -prompt[:1])
    narrow = save_adapter(root / "narrow", torch.ones(4, 8))
    corrupt = save_adapter(root / "corrupt", torch.ones(4, 16))
    with open(os.path.join(corrupt, "adapter_config.json"), "w") as handle:
        handle.write("{not json")
    scores = {"close": max_cosine(prompt, prompt[:2]), "far": max_cosine(prompt, -prompt[:1])}
    return {"base": base, "adapter": adapter, "library": library, "narrow": narrow, "corrupt": corrupt,
            "missing": str(root / "missing"), "root": str(root), "scores": scores}


@pytest.fixture(scope="module")
def runs(files):
    """Each command line below run as `python -m softprompt_ext ...`, all at once.

    Each process pays the ~7 s CPU of importing torch + transformers + peft, so only the success path and the
    three kinds of bad input go through subprocesses; the rest calls `cli.main` in-process.
    """
    commands = {
        "inspect": ["inspect", files["adapter"], "--base", files["base"], "--top-k", "3", "--json"],
        "missing": ["inspect", files["missing"]],
        "corrupt": ["info", files["corrupt"]],
        "mismatch": ["similar", files["adapter"], files["narrow"]],
    }
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    procs = {
        name: subprocess.Popen([sys.executable, "-m", "softprompt_ext", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=files["root"])
        for name, argv in commands.items()
    }
    return {name: (proc.wait(timeout=300), proc.stdout.read(), proc.stderr.read()) for name, proc in procs.items()}


def own_stderr_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(OWN_PREFIX)]


# ---------------------------------------------------------------------------------------------- subprocess
@pytest.mark.slow
def test_inspect_json_through_python_dash_m(runs):
    code, out, err = runs["inspect"]
    assert code == 0, err
    data = json.loads(out)
    assert data["top_k"] == 3 and len(data["positions"]) == 4
    firsts = [p["neighbours"][0] for p in data["positions"]]
    assert [f["token_id"] for f in firsts[:2]] == [CAT, SEA]
    assert [f["token"] for f in firsts[:2]] == ["▁cat", "▁sea"]
    assert firsts[0]["score"] == pytest.approx(1.0, abs=1e-5)
    returned = {n["token_id"] for p in data["positions"] for n in p["neighbours"]}
    assert not returned & ({0, 1, 2} | set(range(168, 176)))  # specials and sentinels skipped by default


@pytest.mark.slow
def test_a_closed_pipe_ends_quietly(files):
    # `softprompt inspect --json | head`: the reader goes away; before, the command ended with
    # "error: [Errno 32] Broken pipe" and exit code 2
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the child writes a byte (it spends seconds importing torch first)
    try:
        proc = subprocess.run([sys.executable, "-m", "softprompt_ext", "inspect", files["adapter"], "--base",
                               files["base"], "--json"], stdout=write_end, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=files["root"], timeout=300)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr
    assert "Broken pipe" not in proc.stderr and "error" not in "\n".join(own_stderr_lines(proc.stderr))


def test_broken_pipe_in_process_returns_0_without_a_message(files, capsys, monkeypatch):
    class ClosedPipe:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["inspect", files["adapter"], "--base", files["base"], "--json"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", r"^softprompt inspect: error: '.*missing': no such file or directory"),
        ("corrupt", r"^softprompt info: error: .*adapter_config.json: not valid JSON"),
        ("mismatch", r"^softprompt similar: error: d_model mismatch: .*adapter' is \(4, 16\).*narrow' is \(4, 8\)"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(runs, name, message):
    code, out, err = runs[name]
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    lines = own_stderr_lines(err)
    assert len(lines) == 1, err
    assert re.match(message, lines[0]), lines[0]


# ---------------------------------------------------------------------------------------------- in-process
def test_inspect_table_defaults_to_the_adapters_base_model(files, capsys):
    assert main(["inspect", files["adapter"], "--top-k", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{files['adapter']}: P=4, nearest tokens by cosine similarity"
    assert out[1].split() == ["pos", "#1", "#2"]
    assert out[2].split()[:3] == ["0", "▁cat", "1.000"]
    assert out[3].split()[:3] == ["1", "▁sea", "1.000"]


def test_keep_special_shows_the_special_rows(files, capsys):
    assert main(["inspect", files["adapter"], "--top-k", "1", "--keep-special", "--json"]) == 0
    firsts = [p["neighbours"][0]["token"] for p in json.loads(capsys.readouterr().out)["positions"]]
    assert firsts == ["▁cat", "▁sea", "</s>", "<extra_id_2>"]


def test_info_text_and_json(files, capsys):
    assert main(["info", files["adapter"], "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["num_virtual_tokens"], info["d_model"], info["task_type"]) == (4, 16, "SEQ_2_SEQ_LM")
    assert info["base_model_name_or_path"] == files["base"]
    assert info["record"]["class_labels"] == ["cat", "sea"]
    assert main(["info", files["adapter"]]) == 0
    text = capsys.readouterr().out
    assert "P=4 x d_model=16" in text
    assert f"base model     {files['base']}" in text
    assert "class_labels=['cat', 'sea']" in text
    assert f"in {len(info['files'])} files" in text


def test_similar_json(files, capsys):
    assert main(["similar", files["adapter"], files["library"], "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["measure"] == "max_cosine"
    assert [os.path.basename(m["path"]) for m in data["matches"]] == ["close", "far"]
    assert data["matches"][0]["rank"] == 1
    assert [m["score"] for m in data["matches"]] == pytest.approx([files["scores"]["close"], files["scores"]["far"]])
    assert files["scores"]["close"] > 0.5 > files["scores"]["far"]


def test_similar_table(files, capsys):
    assert main(["similar", files["adapter"], files["library"], "--measure", "pooled_cosine", "--top-k", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("(pooled_cosine):")
    assert len(out) == 3 and out[2].split()[0] == "1" and out[2].endswith(os.path.join("library", "close"))


@pytest.mark.parametrize("command", [[], ["inspect"], ["similar"], ["info"], ["check"]])
def test_help(command, capsys):
    assert main([*command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: {' '.join(['softprompt', *command])}")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], r"^softprompt: error: choose a command: inspect, similar, info, check, serve, lm-adapt"),
        (["inspect"], r"^softprompt inspect: error: the following arguments are required: ADAPTER"),
        (["inspect", "x", "--top-k", "0"], r"^softprompt inspect: error: argument --top-k: expected a whole number >= 1, got 0"),
        (["similar", "x"], r"^softprompt similar: error: the following arguments are required: LIBRARY"),
        (["similar", "x", "y", "--measure", "l2"], r"^softprompt similar: error: argument --measure: invalid choice"),
        (["frobnicate"], r"^softprompt: error: argument COMMAND: invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert re.match(message, err[0]), err[0]


def test_png_heatmaps(files, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    readout_png, matrix_png = tmp_path / "readout.png", tmp_path / "sim" / "matrix.png"
    assert main(["inspect", files["adapter"], "--top-k", "3", "--png", str(readout_png)]) == 0
    assert main(["similar", files["adapter"], files["library"], "--png", str(matrix_png)]) == 0
    for path in (readout_png, matrix_png):
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        assert path.stat().st_size > 5000


def test_png_without_matplotlib_names_the_extra(files, tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import matplotlib...` fail as if not installed
    assert main(["inspect", files["adapter"], "--png", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["softprompt inspect: error: matplotlib is not installed; the PNG heatmaps need it: "
                   "pip install softprompt-ext[plot]"]


def test_lm_adapt_forwards_its_arguments(monkeypatch):
    seen = []
    fake = types.ModuleType("softprompt_ext.training.lm_adapt")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "softprompt_ext.training.lm_adapt", fake)
    assert main(["lm-adapt", "--steps", "10", "--help"]) == 3
    assert seen == [["--steps", "10", "--help"]]


def test_lm_adapt_missing_is_a_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "softprompt_ext.training.lm_adapt", None)  # as if the module were not installed
    assert main(["lm-adapt"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no LM-adaptation module (softprompt_ext.training.lm_adapt)" in err[0]


def test_check_accepts_a_good_adapter_and_its_base(files, capsys):
    assert main(["check", files["adapter"], "--base", files["base"]]) == 0
    out = capsys.readouterr().out
    assert f"{files['adapter']}: ok: SoftPromptConfig, prompt 4 x 16 float32, finite; fits {files['base']}" in out


@pytest.mark.parametrize(("name", "message"), [
    ("narrow", r"d_model"),                       # a prompt of width 8 against a d_model-16 base
    ("corrupt", r"adapter_config\.json"),        # damaged JSON: named, one line
    ("missing", r"missing"),
])
def test_check_refuses_bad_adapters_with_one_line(files, capsys, name, message):
    assert main(["check", files[name], "--base", files["base"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("softprompt check: error: ")
    assert re.search(message, err[0]), err[0]

"""Hub push/pull of a soft-prompt adapter through the real `huggingface_hub` client.

`tests/hub_server.py` serves a Hub-compatible API on 127.0.0.1; `tests/scripts/hub_client.py` runs the
user's workflow in subprocesses with `HF_ENDPOINT` pointing at it (the client reads it at import, and this
test session runs with `HF_HUB_OFFLINE=1`), a token and a fresh `HF_HOME`:

1. push: the tiny base model and tokenizer under their own repo id, then `model.push_to_hub` of a
   `CLASS_LABELS` adapter made on that base, a second push after the prompt changed, and one
   `save_pretrained` + `upload_folder` push;
2. pull: `PeftModel.from_pretrained(base, repo_id)`, `AutoPeftModelForSeq2SeqLM.from_pretrained(repo_id)`
   (loads the base by its Hub id), `revision=<first commit>`, the repo's file list and model card;
3. offline: the server is stopped and `HF_HUB_OFFLINE=1`; the same loads come from the HF cache.

Each test then checks one promise against what the processes recorded and what the server stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hub_server import HubServer
from safetensors.torch import load, load_file

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "tests" / "scripts" / "hub_client.py"
BASE_REPO = "tester/tiny-t5-lm-adapt"
ADAPTER_REPO = "tester/tiny-t5-softprompt"
CARD_REPO = "tester/tiny-t5-softprompt-card"
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", "softprompt_config.json"]
CLIENT_TIMEOUT_S = 240


@dataclass
class HubRun:
    hub: HubServer
    facts: dict[str, dict]  # phase -> what the client recorded
    tensors: dict[str, dict[str, torch.Tensor]]  # phase -> prompts [P, H] and logits [B, T, V]


def _run_client(phase: str, out: Path, env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, str(CLIENT), phase, str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S,
    )
    if result.returncode != 0:
        pytest.fail(f"hub client phase {phase!r} failed (exit {result.returncode}):\n{result.stderr[-4000:]}")


@pytest.fixture(scope="module")
def hub_run(tmp_path_factory) -> HubRun:
    out = tmp_path_factory.mktemp("hub_client")
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path_factory.mktemp("hf_home")),
        "HF_HUB_OFFLINE": "0",  # conftest sets 1 for this session; the client must talk to the test Hub
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    with HubServer(token="hf_softprompt_test") as hub:
        env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token)
        _run_client("push", out, env)
        _run_client("pull", out, env)
    assert not hub.running  # the offline phase must not be able to reach it
    _run_client("offline", out, {**env, "HF_HUB_OFFLINE": "1"})
    phases = ("push", "pull", "offline")
    facts = {p: json.loads((out / f"{p}.json").read_text(encoding="utf-8")) for p in phases}
    tensors = {p: load_file(str(out / f"{p}.safetensors")) for p in phases}
    return HubRun(hub=hub, facts=facts, tensors=tensors)


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # same weights, same inputs, separate processes: equal up to float reduction order
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_push_to_hub_uploads_exactly_the_adapter_files(hub_run):
    repo = hub_run.hub.repo(ADAPTER_REPO)
    assert len(repo.commits) == 3  # the empty initial commit and one per push_to_hub
    assert hub_run.facts["pull"]["files"] == ADAPTER_FILES  # as listed by HfApi.list_repo_files
    assert hub_run.facts["pull"]["files_first"] == ADAPTER_FILES
    stored = hub_run.hub.files(ADAPTER_REPO)
    assert sorted(stored) == ADAPTER_FILES
    prompt = load(stored["adapter_model.safetensors"])
    assert list(prompt) == ["prompt_embeddings"]  # the prompt only, never the base model
    assert torch.equal(prompt["prompt_embeddings"], hub_run.tensors["push"]["prompt_second"])
    record = json.loads(stored["softprompt_config.json"])
    assert record["class_labels"] == ["positive", "negative"] and record["init_seed"] == 7


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_push_used_the_regular_commit_api_and_nothing_unknown(hub_run):
    requests = hub_run.hub.requests
    assert ("POST", f"/api/models/{ADAPTER_REPO}/preupload/main") in requests
    assert ("POST", f"/api/models/{ADAPTER_REPO}/commit/main") in requests
    # every request the client made is one the real Hub answers -- except bitsandbytes' own: importing it (PEFT
    # 0.21 imports it at `import peft`) looks up a CPU kernel from the kernels-community organisation on CPUs with
    # AVX512-BF16. That request is the third party's, made whatever softprompt-ext does; see docs/guides/hub.md.
    ours = [r for r in hub_run.hub.unhandled if "kernels-community" not in str(r)]
    assert ours == []


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_adapter_records_base_model_by_hub_id(hub_run):
    assert hub_run.facts["push"]["base_model_name_or_path"] == BASE_REPO
    config = json.loads(hub_run.hub.files(ADAPTER_REPO)["adapter_config.json"])
    assert config["base_model_name_or_path"] == BASE_REPO
    assert config["num_virtual_tokens"] == 4 and config["num_transformer_submodules"] == 1


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_peft_model_from_pretrained_gives_the_original_logits(hub_run):
    pushed, pulled = hub_run.tensors["push"], hub_run.tensors["pull"]
    assert torch.equal(pulled["prompt"], pushed["prompt_second"])
    _close(pulled["logits"], pushed["logits_second"])


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_auto_peft_model_loads_base_by_name_and_gives_the_original_logits(hub_run):
    pushed, pulled = hub_run.tensors["push"], hub_run.tensors["pull"]
    assert hub_run.facts["pull"]["auto_base_model"] == BASE_REPO
    assert torch.equal(pulled["prompt_auto"], pushed["prompt_second"])
    _close(pulled["logits_auto"], pushed["logits_second"])


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
@pytest.mark.parametrize("phase", ["pull", "offline"])
def test_loaded_config_is_a_softprompt_config_with_its_record(hub_run, phase):
    facts = hub_run.facts[phase]
    assert facts["config_class"] == "SoftPromptConfig"
    assert facts["auto_config_class"] == "SoftPromptConfig"
    assert facts["num_virtual_tokens"] == 4
    assert facts["record"] == {
        "class_labels": ["positive", "negative"],
        "sample_vocab_size": 50,
        "init_range": 0.5,
        "init_seed": 7,
        "init_prompt_path": None,
        "warn_if_not_lm_adapted": True,
    }


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_offline_pull_from_the_hf_cache(hub_run):
    pushed, offline = hub_run.tensors["push"], hub_run.tensors["offline"]
    assert not hub_run.hub.running
    assert torch.equal(offline["prompt"], pushed["prompt_second"])
    _close(offline["logits"], pushed["logits_second"])
    _close(offline["logits_auto"], pushed["logits_second"])


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_revision_pins_the_older_prompt(hub_run):
    pushed, pulled = hub_run.tensors["push"], hub_run.tensors["pull"]
    first, second = hub_run.facts["push"]["first_commit"], hub_run.facts["push"]["second_commit"]
    assert first != second and hub_run.hub.repo(ADAPTER_REPO).refs["main"] == second
    assert not torch.equal(pushed["prompt_first"], pushed["prompt_second"])
    assert torch.equal(pulled["prompt_pinned"], pushed["prompt_first"])
    _close(pulled["logits_pinned"], pushed["logits_first"])
    assert (pulled["logits_pinned"] - pushed["logits_second"]).abs().max() > 1e-3  # a different model indeed


@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_save_pretrained_and_upload_folder_keep_the_model_card(hub_run):
    card = hub_run.facts["pull"]["card_uploaded"]
    assert hub_run.facts["pull"]["card_files"] == ADAPTER_FILES
    assert sorted(hub_run.hub.files(CARD_REPO)) == ADAPTER_FILES
    assert card["library_name"] == "peft"
    assert {"prompt-tuning", "softprompt-ext"} <= set(card["tags"])
    assert card["base_model"] == BASE_REPO
    assert "## Soft prompt (softprompt-ext)" in card["text"]
    assert "| class labels | `positive`, `negative` |" in card["text"]


@pytest.mark.xfail(
    strict=True,
    reason="transformers' PushToHubMixin.push_to_hub (used by PeftModel) writes its template card over the "
    "README.md that save_pretrained wrote, so library_name is 'transformers' and the soft-prompt section is "
    "lost; push with softprompt_ext.push_adapter instead (test above). Strict: an upstream fix "
    "turns this into a failure to notice.",
)
@pytest.mark.slow  # hub_run: a Hub server and client subprocesses
def test_push_to_hub_keeps_the_model_card(hub_run):
    card = hub_run.facts["pull"]["card"]
    assert card["library_name"] == "peft"
    assert {"prompt-tuning", "softprompt-ext"} <= set(card["tags"])



# ---------------------------------------------------------------------------------------- the test Hub itself
def _http(hub: HubServer, method: str, path: str, body: bytes | None = None, token: str | None = None):
    """(status, headers, body) of one raw request; errors are answers too."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(hub.url + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_test_hub_answers_like_the_hub():
    # the headers and error codes huggingface_hub turns into its typed errors and cache entries
    with HubServer(token="t0k") as hub:
        create = json.dumps({"name": "repo", "organization": "tester", "type": "model"}).encode()
        assert _http(hub, "POST", "/api/repos/create", create)[0] == 401  # writes need the token
        status, _, body = _http(hub, "POST", "/api/repos/create", create, token="t0k")
        assert status == 200 and json.loads(body)["url"] == f"{hub.url}/tester/repo"
        assert _http(hub, "POST", "/api/repos/create", create, token="t0k")[0] == 409  # create_repo(exist_ok)

        commit = b"\n".join(json.dumps(line).encode() for line in [
            {"key": "header", "value": {"summary": "add"}},
            {"key": "file", "value": {"path": "a/b.txt", "content": "aGk=", "encoding": "base64"}},  # "hi"
        ])
        status, _, body = _http(hub, "POST", "/api/models/tester/repo/commit/main", commit, token="t0k")
        oid = json.loads(body)["commitOid"]
        assert status == 200 and len(oid) == 40

        status, headers, body = _http(hub, "GET", f"/tester/repo/resolve/{oid[:7]}/a/b.txt")
        assert (status, body, headers["X-Repo-Commit"]) == (200, b"hi", oid)
        # printf hi | git hash-object --stdin
        assert headers["ETag"] == '"32f95c0d1244a78b2be1bab8de17906fabb2c4a8"'
        assert headers["Content-Length"] == "2"

        status, headers, _ = _http(hub, "HEAD", "/tester/repo/resolve/main/nope.txt")
        assert (status, headers["X-Error-Code"], headers["X-Repo-Commit"]) == (404, "EntryNotFound", oid)
        assert _http(hub, "HEAD", "/tester/other/resolve/main/a.txt")[1]["X-Error-Code"] == "RepoNotFound"
        unknown_revision = _http(hub, "HEAD", "/tester/repo/resolve/" + "0" * 40 + "/a/b.txt")
        assert unknown_revision[1]["X-Error-Code"] == "RevisionNotFound"

        top = json.loads(_http(hub, "GET", "/api/models/tester/repo/tree/main")[2])
        assert [(e["type"], e["path"]) for e in top] == [("directory", "a")]
        everything = json.loads(_http(hub, "GET", "/api/models/tester/repo/tree/main?recursive=True")[2])
        assert [(e["type"], e["path"], e["size"]) for e in everything] == [
            ("directory", "a", 0), ("file", "a/b.txt", 2)
        ]
    assert not hub.running

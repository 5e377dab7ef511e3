"""scripts/embedded_build (python -m scripts.embedded_build): a build in sittings ends where a straight build does; --corpus, --plan.

Tiny shapes, a synthetic corpus made with `text_corpus.build` (valid manifest), `--without_wordnet` (no Debian
data needed), CPU, fp32: a 10-step build with 4 steps of LM adaptation, straight and in four sittings.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scripts.embedded_build import build as bem
from scripts.embedded_build import corpus as text_corpus
from scripts.embedded_build import plan as build_plan
from scripts.embedded_build import sittings as build_sittings

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--d_model", "32", "--d_ff", "48", "--num_layers", "1", "--num_heads", "2", "--d_kv", "16",
        "--vocab_size", "160", "--batch_size", "4", "--input_length", "24", "--target_length", "8",
        "--pretrain_steps", "10", "--adapt_fraction", "0.4", "--log_every", "1", "--save_every", "0",
        "--precision", "fp32", "--device", "cpu", "--without_wordnet"]
WORDS = ("the library stores every record on disk in pages and each page holds a header with cells that point "
         "to rows while an index keeps keys sorted so a query finds them quickly after the writer commits").split()


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A text_corpus.py output directory: 60 distinct prose paragraphs, one MIT-licensed source."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(12, 30))).capitalize() + "."
                  for _ in range(60)]
    (root / "pkg" / "doc").mkdir(parents=True)
    (root / "pkg" / "doc" / "a.txt").write_text("\n\n".join(paragraphs), encoding="utf-8")
    source = text_corpus.Source("demo", "apt", "demo-doc", "MIT", "plain", r"/doc/.*\.txt$")
    text_corpus.build([source], str(root / "out"), str(root / "cache"), [], roots={"demo": str(root / "pkg")})
    return root / "out"


def build(root: Path, corpus: Path, *extra: str) -> int:
    return bem.main([*TINY, "--corpus", str(corpus), "--work_dir", str(root / "work"),
                     "--export_dir", str(root / "export"), *extra])


@pytest.fixture(scope="module")
def straight(corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    assert build(root, corpus) == 0
    return root


def record(root: Path) -> dict:
    return json.loads((root / "export" / "build_record.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_four_sittings_end_with_the_weights_of_a_straight_build(straight, corpus, tmp_path, monkeypatch):
    """SIGTERM at step 3; --sitting_steps 9 (pretraining to 10, LM to 2); --time_budget_s 0 (LM step 3); the rest."""
    step_done = build_sittings.Sitting.step_done

    def sigterm_at_3(self):
        if self.steps == 2:
            signal.raise_signal(signal.SIGTERM)  # the handler asks to stop after the current (third) step
        return step_done(self)

    # the same tokenizer: tokenizers' Unigram trainer is not deterministic (near-tied pieces swap ids between
    # runs on the same lines), and the build reuses a work_dir's tokenizer trained on the same lines
    (tmp_path / "work").mkdir()
    shutil.copytree(straight / "work" / "tokenizer", tmp_path / "work" / "tokenizer")
    shutil.copy(straight / "work" / "tokenizer_lines.json", tmp_path / "work")
    handler = signal.getsignal(signal.SIGTERM)
    with monkeypatch.context() as patch:
        patch.setattr(build_sittings.Sitting, "step_done", sigterm_at_3)
        assert build(tmp_path, corpus) == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is handler  # restored
    assert (tmp_path / "work" / build_sittings.PRETRAIN_STATE).is_file() and not (tmp_path / "export").exists()
    assert build(tmp_path, corpus, "--resume", "--sitting_steps", "9") == 0
    assert (tmp_path / "work" / "lm_adapt" / "checkpoint-2").is_dir()
    assert build(tmp_path, corpus, "--resume", "--time_budget_s", "0") == 0
    assert build(tmp_path, corpus, "--resume") == 0

    split, whole = record(tmp_path), record(straight)
    for phase in ("pretraining", "lm_adaptation"):
        assert [p["step"] for p in split[phase]["loss_curve"]] == [p["step"] for p in whole[phase]["loss_curve"]]
        assert [p["loss"] for p in split[phase]["loss_curve"]] == pytest.approx(
            [p["loss"] for p in whole[phase]["loss_curve"]], rel=1e-6)
    assert split["pretraining"]["tokens_seen"] == whole["pretraining"]["tokens_seen"]
    for name in ("span", "lm_adapt"):  # the fp32 checkpoints, before the fp16 export
        expected = load_file(straight / "work" / name / "model.safetensors")
        actual = load_file(tmp_path / "work" / name / "model.safetensors")
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-6, atol=1e-7)
    spans = [(s["phase"], s["start_step"], s["end_step"], s["stopped"]) for s in split["segments"]]
    assert spans == [("pretraining", 0, 3, "SIGTERM"), ("pretraining", 3, 10, None), ("lm_adaptation", 0, 2, "sitting_steps"),
                     ("lm_adaptation", 2, 3, "time_budget_s"), ("lm_adaptation", 3, 4, None)]
    assert build(tmp_path, corpus, "--resume") == 0  # done: nothing more to do


def test_record_and_card_name_every_source_and_segment(straight, corpus):
    rec = record(straight)
    manifest = json.loads((corpus / "manifest.json").read_text(encoding="utf-8"))
    (source,) = rec["data"]["sources"]
    assert (source["name"], source["package"], source["licence"]) == ("demo", "demo-doc", "MIT")
    assert rec["data"]["corpus"]["corpus_sha256"] == manifest["corpus_sha256"]
    assert rec["data"]["corpus_lines"] == manifest["sources"]["demo"]["paragraphs"] == 60
    (pre, lm) = rec["segments"]
    assert (pre["phase"], pre["end_step"], lm["phase"], lm["end_step"]) == ("pretraining", 10, "lm_adaptation", 4)
    for segment in rec["segments"]:
        assert segment["torch"] == torch.__version__ and segment["device"] == "cpu" and segment["precision"] == "fp32"
        assert segment["host_cpu"] and segment["wall_seconds"] >= 0
    assert rec["model_shape"] == {"d_model": 32, "d_kv": 16, "d_ff": 48, "num_layers": 1, "num_decoder_layers": 1,
                                  "num_heads": 2}
    card = (straight / "export" / "t5-wordnet-lm-adapt" / "README.md").read_text(encoding="utf-8")
    assert "- demo: apt package `demo-doc` local" in card and "licence **MIT**" in card
    assert "WordNet" not in card.split("## Data and licence")[1]
    assert not (straight / "export" / "LICENSE").exists()  # no WordNet text, no WordNet licence
    span_card = (straight / "export" / "t5-wordnet-span" / "README.md").read_text(encoding="utf-8")
    assert span_card.startswith("---") and "# t5-wordnet-span (embedded in softprompt-ext)" in span_card
    assert "licence **MIT**" in span_card and 'load_embedded("span")' in span_card
    health = rec["health"]["lm_adapt"]  # the card carries the build's own diagnostics, measured after export
    assert f"own encoder input {health['own_input_loss']:.3f} vs a neighbour's" in card


def test_every_build_records_the_encoder_use_diagnostics(straight):
    """Health first: both exported checkpoints get the own- vs shuffled-input loss, the residual
    stream per encoder layer and the linear probe, measured on the exported files."""
    health = record(straight)["health"]
    assert set(health) == {"lm_adapt", "span"}
    for kind, report in health.items():
        assert report["path"].endswith("t5-wordnet-lm-adapt" if kind == "lm_adapt" else "t5-wordnet-span")
        assert math.isfinite(report["own_input_loss"]) and math.isfinite(report["shuffled_input_loss"])
        assert len(report["residual_stream"]) == 2  # the embedding, then the one encoder layer of TINY
        assert 0.0 <= report["linear_probe"]["dev_accuracy"] <= 1.0
    assert bem.health_line(health).startswith("health: lm_adapt: loss own ")


def test_a_corpus_is_refused_unless_its_manifest_matches(corpus, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "corpus.txt").write_text((corpus / "corpus.txt").read_text(encoding="utf-8") + "One more line here.\n")
    with pytest.raises(ValueError, match=r"has no manifest.json .*python -m scripts.embedded_build corpus --out"):
        build(tmp_path, bad)
    (bad / "manifest.json").write_text((corpus / "manifest.json").read_text(encoding="utf-8"))
    with pytest.raises(ValueError, match=r"bad/corpus.txt has sha256 .* but .*manifest.json says corpus_sha256"):
        build(tmp_path, bad)


def test_resume_refusals(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"--resume, but .*build_state.json does not exist"):
        build(tmp_path, corpus, "--resume")
    assert build(tmp_path, corpus, "--sitting_steps", "1") == 0
    with pytest.raises(ValueError, match=r"holds an unfinished build \(phase 'pretraining'\); pass --resume"):
        build(tmp_path, corpus)
    with pytest.raises(ValueError, match=r"started with other inputs \(lr: started with 0.01, now 0.001\)"):
        build(tmp_path, corpus, "--resume", "--lr", "1e-3")
    with pytest.raises(ValueError, match=r"--verify_steps in --work_dir .* holds an unfinished build"):
        build(tmp_path, corpus, "--verify_steps", "2")


@pytest.mark.parametrize(("argv", "message"), [
    (["--vocab_size", "100"], r"--vocab_size=100: .* must be > 103"),
    (["--without_wordnet"], r"--without_wordnet leaves no text to train on; pass --corpus DIR"),
    (["--d_model", "0"], r"--d_model=0: a model dimension must be >= 1"),
    (["--sitting_steps", "0"], r"--sitting_steps=0: must be >= 1"),
    (["--resume", "--verify_steps", "5"], r"--resume with --verify_steps"),
])
def test_flag_errors(argv, message):
    with pytest.raises(ValueError, match=message):
        bem.main(argv)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_cuda_without_cuda_is_refused():
    with pytest.raises(ValueError, match=r"--device cuda, but torch.cuda.is_available\(\) is False"):
        bem.main(["--device", "cuda", "--plan"])


def test_plan_of_the_default_shape_is_the_shipped_model(capsys):
    assert bem.parse_args([]).d_model == build_plan.MODEL_SHAPE["d_model"]
    assert build_plan.shape_from_args(bem.parse_args([])) == build_plan.MODEL_SHAPE
    assert bem.main(["--plan"]) == 0
    out = capsys.readouterr().out
    shipped = json.loads((ROOT / "softprompt_ext" / "data" / "embedded" / "build_record.json").read_text())["parameters"]
    assert f"parameters: {shipped:,}" in out  # 9,445,120: counted from the model class, tied table once
    assert f"fp16 {2 * shipped / 1e6:.1f} MB" in out and "of the 60 MB cap: fits" in out
    assert "tokens per step: at most 5,120" in out  # 32 x (128 + 32)


def test_plan_refuses_a_shape_over_the_cap_unless_allowed(capsys):
    large = ["--d_model", "512", "--d_ff", "1365", "--num_layers", "8", "--num_heads", "8", "--plan"]
    with pytest.raises(ValueError, match=r"would take \d+\.\d MB, over the 60 MB cap .* or pass --allow_large"):
        bem.main(large)
    assert "OVER" in capsys.readouterr().out
    assert bem.main([*large, "--allow_large"]) == 0


def test_sitting_turns_signals_into_a_stop_and_restores_the_handlers():
    before = signal.getsignal(signal.SIGINT)
    with build_sittings.Sitting() as sitting:
        assert sitting.should_stop() is None
        signal.raise_signal(signal.SIGINT)
        assert sitting.should_stop() == "SIGINT" and sitting.exit_status() == 130
        assert signal.getsignal(signal.SIGINT) is before  # a second Ctrl-C acts at once
    assert signal.getsignal(signal.SIGINT) is before
    budget = build_sittings.Sitting(sitting_steps=2)
    assert [budget.step_done(), budget.step_done()] == [None, "sitting_steps"] and budget.exit_status() == 0


def test_packing_fills_examples_and_keeps_every_token(straight, corpus, tmp_path):
    """`--pack` (T5's packing): an epoch's examples hold every line's tokens once, in chunks of the objective's
    length (inputs within input_length, targets within target_length), the same for the same (seed, epoch),
    another order for another epoch; a packed build sees more tokens in the same steps than one line per example."""
    from softprompt_ext.tiny_models import build_tokenizer
    from softprompt_ext.training.lm_objectives import LMObjective

    tokenizer = build_tokenizer()
    objective = LMObjective(tokenizer, objective="span_corruption", input_length=24, target_length=8, seed=0)
    lines = [" ".join(WORDS[i : i + 3 + i % 7]) for i in range(20)]
    ids = bem.line_token_ids(objective, lines)
    rows = bem.packed_span_examples(objective, ids, epoch=0, seed=0)
    sentinels = set(objective.sentinels) | {tokenizer.eos_token_id}
    assert all(len(r["input_ids"]) <= 24 and len(r["labels"]) <= 8 for r in rows)
    kept = sum(1 for r in rows for t in r["input_ids"] + r["labels"] if t not in sentinels)
    total = sum(map(len, ids))
    assert total - objective.chunk_length < kept <= total  # all but (at most) the stream's last short piece
    assert len(rows) >= total // objective.chunk_length
    assert rows == bem.packed_span_examples(objective, ids, epoch=0, seed=0)
    assert rows != bem.packed_span_examples(objective, ids, epoch=1, seed=0)
    root = tmp_path / "packed"
    assert build(root, corpus, "--pack", "--no_health") == 0
    packed, plain = record(root)["pretraining"], record(straight)["pretraining"]
    assert packed["packed"] and not plain["packed"]
    assert packed["tokens_seen"] > plain["tokens_seen"]


# ------------------------------------------------------------------ what the WordNet part of a build holds out
def _fake_wordnet(per_class: int = 330) -> list:
    """Enough synthetic synsets for both tasks' splits (330 a class), each with its own definition."""
    from scripts.embedded_build import wordnet as wordnet_data

    synsets = []
    for lexname in (*wordnet_data.SUPERSENSES, *wordnet_data.VERB_SUPERSENSES, "adj.all"):
        kind = lexname.split(".")[0][0]
        for i in range(per_class):
            synsets.append(wordnet_data.Synset(len(synsets), lexname, {"a": "a"}.get(kind, kind),
                                               (f"{lexname}-{i}",), f"definition {i} of {lexname}", ()))
    return synsets


def test_pretraining_lines_hold_out_the_dev_and_test_of_both_tasks(monkeypatch, tmp_path):
    from scripts.embedded_build import data as build_data
    from scripts.embedded_build import wordnet as wordnet_data

    monkeypatch.setattr(build_data, "ensure_wordnet", lambda: None)
    monkeypatch.setattr(wordnet_data, "read_wordnet", _fake_wordnet)
    written = {}
    monkeypatch.setattr(build_data, "write_task", lambda splits, task_dir=build_data.TASK_DIR, verbs=False:
                        written.__setitem__(task_dir, splits))
    args = bem.parse_args(["--work_dir", str(tmp_path)])
    record: dict = {}
    text = "\n".join(build_data.pretraining_lines(args, record))
    assert set(written) == {build_data.TASK_DIR, build_data.VERB_TASK_DIR}
    for task_dir, splits in written.items():
        for split, rows in splits.items():
            definitions = [r["text"].split(": ", 1)[1] + "." for r in rows]
            inside = sum(d in text for d in definitions)
            assert inside == (len(rows) if split == "train" else 0), (task_dir, split, inside)
    assert record["data"]["held_out_synsets"] == 4 * 320
    assert record["data"]["held_out_tasks"] == ["wordnet_supersense", "wordnet_verb_supersense"]


def test_a_corpus_not_filtered_against_both_tasks_is_refused(monkeypatch, corpus, tmp_path):
    from scripts.embedded_build import data as build_data
    from scripts.embedded_build import wordnet as wordnet_data

    monkeypatch.setattr(build_data, "ensure_wordnet", lambda: None)
    monkeypatch.setattr(wordnet_data, "read_wordnet", _fake_wordnet)
    monkeypatch.setattr(build_data, "write_task", lambda *a, **k: None)
    args = bem.parse_args(["--work_dir", str(tmp_path), "--corpus", str(corpus)])  # its held_out is []
    with pytest.raises(ValueError, match=r"--corpus .*: its manifest.json lists held_out \[\], so it was not "
                                         r"leak-filtered against \['softprompt_ext/data/wordnet_supersense/dev.jsonl'"):
        build_data.pretraining_lines(args, {})


def test_verify_steps_refuses_text_other_than_the_shipped_builds(tmp_path):
    shipped = tmp_path / "record.json"
    shipped.write_text(json.dumps({"data": {"corpus_lines": 22452, "corpus_chars": 100}}))
    bem.check_same_text({"corpus_lines": 22452, "corpus_chars": 100}, str(shipped))
    with pytest.raises(ValueError, match=r"--verify_steps: the shipped model was pretrained on other text "
                                         r"\(corpus_lines 22452 shipped vs 22349 now\)"):
        bem.check_same_text({"corpus_lines": 22349, "corpus_chars": 100}, str(shipped))
    shipped.write_text(json.dumps({"data": {"lines_sha256": "aa", "corpus_lines": 1}}))
    bem.check_same_text({"lines_sha256": "aa", "corpus_lines": 2}, str(shipped))  # the hash decides where it is
    with pytest.raises(ValueError, match=r"lines_sha256 aa shipped vs bb now"):
        bem.check_same_text({"lines_sha256": "bb"}, str(shipped))


def test_the_encoder_watch_stops_a_collapsing_build_early_and_changes_no_weight(straight, corpus, tmp_path):
    """`--watch_every N --min_rank R` (after the first v3 build collapsed unnoticed for two hours): the encoder's
    per-layer rank is recorded every N steps; one below R ends the sitting with exit status 3 and the state
    saved, and `--resume --min_rank 0` trains on to the weights of a build that was never watched."""
    from safetensors.torch import load_file

    (tmp_path / "work").mkdir()  # the straight build's tokenizer (Unigram training is not deterministic)
    shutil.copytree(straight / "work" / "tokenizer", tmp_path / "work" / "tokenizer")
    shutil.copy(straight / "work" / "tokenizer_lines.json", tmp_path / "work")
    assert build(tmp_path, corpus, "--watch_every", "5", "--min_rank", "1000", "--no_health") == 3
    state = json.loads((tmp_path / "work" / build_sittings.STATE_JSON).read_text())
    (segment,) = state["segments"]
    assert (segment["phase"], segment["end_step"], segment["stopped"]) == ("pretraining", 5, "health")
    assert not (tmp_path / "export" / "build_record.json").exists()
    assert build(tmp_path, corpus, "--watch_every", "5", "--resume", "--no_health") == 0
    watch = record(tmp_path)["pretraining"]["encoder_watch"]
    assert [p["step"] for p in watch] == [5, 10]
    assert all(1 <= p["min_rank"] <= 32 and len(p["stream"]) == 2 for p in watch)  # embeddings, layer 1 (+ final norm)
    for name in ("span", "lm_adapt"):
        expected = load_file(straight / "work" / name / "model.safetensors")
        actual = load_file(tmp_path / "work" / name / "model.safetensors")
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-6, atol=1e-7)


def test_min_rank_without_a_watch_is_refused():
    with pytest.raises(ValueError, match=r"--min_rank=10.0 needs --watch_every N > 0"):
        bem.main([*TINY, "--corpus", "unused", "--watch_every", "0", "--min_rank", "10", "--plan"])


@pytest.mark.parametrize("name, lowest, highest", [("adafactor", 0.3, 3.0), ("adamw", 0.0, 0.2)])
def test_adafactor_moves_the_unit_scale_table_as_far_as_the_layers_relative_to_their_size(name, lowest, highest):
    """`--optimizer adafactor` (T5's) steps relative to each parameter's RMS, so after one step the tied table
    (N(0, 1), also the output layer) changed by about the same fraction of its size as a layer matrix did
    (~d_model^-0.5 scale); AdamW's absolute steps move it ~1/sqrt(d_model) as far."""
    shape = {"d_model": 32, "d_kv": 16, "d_ff": 48, "num_layers": 1, "num_decoder_layers": 1, "num_heads": 2}
    model = bem.build_model(shape, 64, seed=0)
    optimizer = bem.make_optimizer(model, name, 1e-2)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 64, (8, 12), generator=generator)
    labels = torch.randint(3, 64, (8, 6), generator=generator)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(input_ids=ids, labels=labels).loss.backward()
    optimizer.step()
    params = dict(model.named_parameters())

    def moved(name: str, rows: torch.Tensor | None = None) -> float:
        old, new = before[name], params[name].detach()
        if rows is not None:
            old, new = old[rows], new[rows]
        return float((new - old).pow(2).mean().sqrt() / old.pow(2).mean().sqrt())

    used = torch.unique(torch.cat([ids.flatten(), labels.flatten()]))  # rows without a gradient stay put
    table = moved("shared.weight", used)
    layers = [moved(n) for n in params if n.endswith((".q.weight", ".wi_0.weight", ".wo.weight"))]
    ratio = table / (sum(layers) / len(layers))
    assert lowest < ratio < highest, (name, table, layers)


def test_the_optimizer_is_recorded_and_its_default_learning_rate_is_t5s():
    args = bem.parse_args([])
    assert (args.optimizer, args.lr) == ("adafactor", 1e-2)  # the shipped build's
    assert bem.parse_args(["--optimizer", "adamw"]).lr == 5e-4 and bem.parse_args(["--lr", "3e-3"]).lr == 3e-3
    assert "optimizer" in bem.FINGERPRINT_FLAGS  # a --resume with another optimizer is refused

"""The `softprompt` command line: inspect, compare and describe saved prompts.

    softprompt inspect ADAPTER [--base MODEL] [--top-k K] [--json] [--keep-special] [--png FILE]
    softprompt similar TARGET LIBRARY... [--measure max_cosine|pooled_cosine] [--json] [--png FILE]
    softprompt info ADAPTER [--json]
    softprompt check ADAPTER [--base MODEL]   (validate an untrusted adapter without loading it)
    softprompt serve [--base MODEL] [--adapter [NAME=]SOURCE]... [--port N]   (HTTP server, needs [serve])
    softprompt lm-adapt ...          (forwards to softprompt_ext.training.lm_adapt when installed)

Installed as the console script `softprompt` (entry point `softprompt_ext.cli:main`) and runnable as
`python -m softprompt_ext`. Every subcommand is a thin shell over a library function
(`analysis.readout.adapter_readout`, `analysis.similarity.most_similar`, `analysis.readout.adapter_info`, `analysis.plots.*`), so what
the command line prints is what the library returns.

Exit codes (every command but `lm-adapt`, which has its own):

* 0 -- success (`check`: the adapter passed every check); also when the reader of stdout goes away (`| head`).
* 1 -- an unexpected error inside softprompt-ext or a library it uses: a bug. One line on stderr
  (`softprompt <command>: internal error: ...`); the traceback only with `SOFTPROMPT_TRACEBACK=1`.
* 2 -- bad input: bad arguments, or an adapter / model that cannot be used (`check`: the adapter was refused),
  with a single line on stderr (`softprompt <command>: error: ...`) and no traceback.
* 130 -- interrupted (Ctrl-C), one line.

Output never carries raw control characters: everything printed as text (adapter metadata, paths, tokens,
error messages) has its non-printable characters escaped (`\x1b`, `\u202e`), so an adapter cannot drive the
terminal with ANSI escape codes or fake lines with newlines; `--json` output is JSON-escaped ASCII.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Sequence

PROG = "softprompt"
_USER_ERRORS = (ValueError, OSError, ImportError)  # bad input, unreadable files, missing optional extra


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (usage is one `--help` away) instead of usage + error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def _add_reading_commands(commands: argparse._SubParsersAction) -> None:
    """The `inspect` and `similar` subcommands: reading one prompt, ranking a library of them."""
    inspect = commands.add_parser(
        "inspect",
        help="nearest vocabulary tokens of each prompt position (paper section 7)",
        description="For each prompt position, the top-k vocabulary tokens by cosine similarity to the base "
        "model's input embeddings (Lester et al. 2021, section 7).",
    )
    inspect.add_argument("adapter", metavar="ADAPTER", help="adapter directory or Hub adapter id")
    inspect.add_argument("--base", metavar="MODEL", help="base model (default: the adapter's base_model_name_or_path)")
    inspect.add_argument("--tokenizer", metavar="TOKENIZER", help="tokenizer (default: the base model's)")
    inspect.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="neighbours per position (5)")
    inspect.add_argument("--keep-special", action="store_true", help="also show special and sentinel tokens")
    inspect.add_argument("--keep-sentinels", action="store_true", help="also show T5 sentinels <extra_id_i>")
    inspect.add_argument("--json", action="store_true", help="print JSON instead of a table")
    inspect.add_argument("--png", metavar="FILE", help="also write a heatmap PNG (needs softprompt-ext[plot])")

    similar = commands.add_parser(
        "similar",
        help="rank saved prompts by similarity to a target prompt (SPoT-style retrieval)",
        description="Rank the prompts of LIBRARY (adapter directories, folders of them, or Hub ids) by "
        "similarity to TARGET. For transfer, TARGET should be a prompt trained briefly on the new task.",
    )
    similar.add_argument("target", metavar="TARGET", help="adapter directory, Hub id or .safetensors file")
    similar.add_argument("library", metavar="LIBRARY", nargs="+", help="adapters, folders of adapters, Hub ids")
    similar.add_argument("--measure", choices=["max_cosine", "pooled_cosine"], default="max_cosine",
                         help="max_cosine: symmetrised mean of per-row best cosines (default); "
                         "pooled_cosine: cosine of the mean-pooled prompts")
    similar.add_argument("--top-k", type=_positive_int, metavar="N", help="show the N best only")
    similar.add_argument("--json", action="store_true", help="print JSON instead of a table")
    similar.add_argument("--png", metavar="FILE", help="also write the similarity matrix as a PNG")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `softprompt` (exposed for documentation tools)."""
    parser = _Parser(prog=PROG, description="Inspect, compare and describe saved soft prompts (softprompt-ext).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    _add_reading_commands(commands)

    info = commands.add_parser("info", help="P, d_model, task type, base model, init record, size on disk",
                               description="Describe a saved prompt-tuning adapter.")
    info.add_argument("adapter", metavar="ADAPTER", help="adapter directory or Hub adapter id")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")

    check = commands.add_parser(
        "check", help="validate an adapter without loading it (safetensors only, shapes, dtype, finite values)",
        description="Check an adapter as softprompt_ext.validate_adapter does: config fields, safetensors only "
        "(no pickle), prompt shape, dtype and finite values; with --base, that its d_model fits the model.",
    )
    check.add_argument("adapter", metavar="ADAPTER", help="adapter directory or Hub adapter id")
    check.add_argument("--base", metavar="MODEL", help="also check the prompt fits this base model's d_model")

    serve = commands.add_parser(
        "serve", help="serve a base model and prompt adapters over HTTP (OpenAI-compatible; needs [serve])",
        description="Serve one frozen base model and many prompt adapters over HTTP, batching requests for any "
        "mix of adapters into one model call (POST /v1/completions, /v1/chat/completions, /v1/classify, /tokenize, "
        "/detokenize; GET /v1/models, /tokenizer_info, /health, /metrics; POST/DELETE /admin/adapters). Every flag "
        "below is a ServeSettings field (the keywords of softprompt_ext.serve). Needs: pip install "
        "'softprompt-ext[serve]'.",
    )
    serve.add_argument("--base", metavar="MODEL", help="base model, Hub id or directory (default: the embedded T5)")
    serve.add_argument("--adapter", action="append", default=[], metavar="[NAME=]SOURCE",
                       help="adapter directory, folder of adapter directories or Hub id (repeatable)")
    from .inference.serving.settings import add_cli_args as add_serve_settings

    add_serve_settings(serve)  # every ServeSettings field: --max-adapters, --batching, ... (settings.py)
    serve.add_argument("--engine-in-process", action="store_true",
                       help="run the model in a worker thread of the HTTP process instead of a process of its own "
                       "(the default keeps HTTP work and the model from taking turns for one interpreter lock)")
    serve.add_argument("--demo", action="store_true",
                       help="also serve 'supersense-init': an untrained prompt on the embedded T5, initialised from "
                       "the bundled noun task's class labels (try the server without training one first)")

    commands.add_parser("lm-adapt", add_help=False, help="LM-adapt a T5 model (paper section 3.3); "
                        "see 'softprompt lm-adapt --help'")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run `softprompt` with `argv` (default: `sys.argv[1:]`); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-adapt"]:
        return _lm_adapt(argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a parse error (2), already printed
        return exc.code if isinstance(exc.code, int) else 0
    if args.command is None:
        print(f"{PROG}: error: choose a command: inspect, similar, info, check, serve, lm-adapt (see '{PROG} --help')", file=sys.stderr)
        return 2
    run = {"inspect": _inspect, "similar": _similar, "info": _info, "check": _check, "serve": _serve}[args.command]
    with _quiet_transformers():
        try:
            run(args)
            sys.stdout.flush()  # a closed pipe shows up here, not at interpreter exit
        except BrokenPipeError:
            # the reader went away (`softprompt inspect ... | head`): stop quietly, as `cat` does
            _silence_stdout()
            return 0
        except _USER_ERRORS as exc:
            print(f"{PROG} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # a bug (ours or a library's): one line, not a traceback in the user's face
            if os.environ.get("SOFTPROMPT_TRACEBACK") == "1":
                raise
            print(f"{PROG} {args.command}: internal error: {type(exc).__name__}: {_one_line(exc)} (a bug; "
                  "rerun with SOFTPROMPT_TRACEBACK=1 for the traceback and please report it)", file=sys.stderr)
            return 1
    return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush does not report the broken pipe again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured in tests)
        pass


# ---------------------------------------------------------------------------------------------- commands
def _inspect(args: argparse.Namespace) -> None:
    from .analysis.readout import adapter_readout, format_readout, readout_to_dict

    readout = adapter_readout(
        args.adapter,
        args.base,
        tokenizer=args.tokenizer,
        top_k=args.top_k,
        skip_special=not args.keep_special,
        skip_sentinels=not (args.keep_special or args.keep_sentinels),
    )
    if args.png:
        from .analysis.plots import plot_readout

        plot_readout(readout, args.png, title=f"Nearest tokens of {args.adapter}")
    if args.json:
        print(json.dumps({"adapter": args.adapter, "top_k": args.top_k, "positions": readout_to_dict(readout)}))
    else:
        print(f"{_safe(args.adapter)}: P={len(readout)}, nearest tokens by cosine similarity")
        print("\n".join(_safe(line) for line in format_readout(readout).split("\n")))


def _similar(args: argparse.Namespace) -> None:
    from .analysis.similarity import most_similar, similarity_matrix

    matches = most_similar(args.target, args.library, measure=args.measure, top_k=args.top_k)
    if args.png:
        from .analysis.plots import plot_similarity

        names = [args.target] + [m.path for m in matches]
        plot_similarity(similarity_matrix(names, args.measure), names, args.png, title=f"Prompt similarity ({args.measure})")
    if args.json:
        rows = [{"rank": i + 1, **vars(m)} for i, m in enumerate(matches)]
        print(json.dumps({"target": args.target, "measure": args.measure, "matches": rows}))
        return
    print(f"prompts most similar to {_safe(args.target)} ({args.measure}):")
    print(f"{'rank':>4}  {'score':>6}  {'P':>4}  adapter")
    for i, m in enumerate(matches):
        print(f"{i + 1:>4}  {m.score:>6.3f}  {m.num_virtual_tokens:>4}  {_safe(m.path)}")


def _info(args: argparse.Namespace) -> None:
    from .analysis.readout import adapter_info

    info = adapter_info(args.adapter)
    if args.json:
        print(json.dumps(info))
        return
    rows = info["saved_rows"]
    shape = f"P={info['num_virtual_tokens']} x d_model={info['d_model']}"
    if rows != info["num_virtual_tokens"]:
        shape += f" ({rows} rows saved; the encoder uses the first {info['num_virtual_tokens']})"
    record = info["record"]
    made = "none (a plain PEFT adapter)" if record is None else ", ".join(
        f"{k}={v!r}" for k, v in sorted(record.items()) if v is not None
    )
    for label, value in [
        ("adapter", info["adapter"]),
        ("prompt", shape),
        ("task type", info["task_type"]),
        ("base model", info["base_model_name_or_path"]),
        ("tokenizer", info["tokenizer_name_or_path"]),
        ("init", info["prompt_tuning_init"]),
        ("init record", made),
        ("mean row norm", f"{info['mean_row_norm']:.4g}"),
        ("size on disk", f"{_human(info['size_on_disk'])} in {len(info['files'])} files"),
    ]:
        print(f"{label:<14} {_safe(str(value))}")


def _check(args: argparse.Namespace) -> None:
    from .adapters.validation import validate_adapter

    base = None
    if args.base:
        from transformers import AutoConfig, AutoModel

        # the d_model check needs only the input-embedding width: build the model skeleton, no weights
        base = AutoModel.from_config(AutoConfig.from_pretrained(args.base))
    report = validate_adapter(args.adapter, base)
    rows, width = report.prompt.shape
    fits = f"; fits {_safe(args.base)} (d_model {width})" if args.base else ""
    print(f"{_safe(args.adapter)}: ok: {type(report.config).__name__}, prompt {rows} x {width} "
          f"{str(report.prompt.dtype).removeprefix('torch.')}, finite{fits}")


DEMO_ADAPTER = "supersense-init"


def demo_adapter(directory: str | None = None) -> str:
    """`softprompt serve --demo`'s adapter: 20 virtual tokens on the embedded T5, initialised from the 8 labels
    of the bundled noun supersense task (class-label init, paper section 3.2), untrained, written to `directory`
    (default: a new temporary directory); returns the directory."""
    import tempfile

    from peft import get_peft_model

    from .config import SoftPromptConfig
    from .embedded import default_model_and_tokenizer, default_model_path
    from .tasks.supersense import SUPERSENSE_LABELS

    directory = directory or tempfile.mkdtemp(prefix="softprompt-demo-")
    model, _ = default_model_and_tokenizer()
    config = SoftPromptConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=20, prompt_tuning_init="CLASS_LABELS",
                              class_labels=list(SUPERSENSE_LABELS), tokenizer_name_or_path=default_model_path(),
                              sample_vocab_size=1000, init_seed=0)  # as examples/supersense.py
    get_peft_model(model, config).save_pretrained(directory)
    return directory


def _serve(args: argparse.Namespace) -> None:
    from .inference.serving.settings import settings_from_cli

    try:
        from .inference.serving import serve
    except ModuleNotFoundError as exc:  # the optional extra is missing
        raise ImportError(f"softprompt serve needs the package {exc.name!r}: pip install 'softprompt-ext[serve]'") from None
    adapters = list(args.adapter)
    cleanup: list = []
    if args.demo:
        if args.base is not None:
            raise ValueError(f"--demo serves a prompt for the embedded T5, but --base {args.base!r} was given; "
                             "drop one of them.")
        import functools
        import shutil

        directory = demo_adapter()
        cleanup.append(functools.partial(shutil.rmtree, directory, ignore_errors=True))
        adapters.append(f"{DEMO_ADAPTER}={directory}")
    try:  # the demo leaves no folder behind: removed at shutdown, or here when the start failed
        serve(args.base, adapters, engine_process=not args.engine_in_process, on_shutdown=cleanup,
              **vars(settings_from_cli(args)))
    finally:
        for callback in cleanup:
            callback()


def _lm_adapt(argv: list[str]) -> int:
    """Forward to `softprompt_ext.training.lm_adapt.main(argv)`, imported only now (it may not be installed)."""
    try:
        module = importlib.import_module("softprompt_ext.training.lm_adapt")
    except ModuleNotFoundError as exc:
        if exc.name not in ("softprompt_ext.training.lm_adapt", None):
            print(f"{PROG} lm-adapt: error: it needs the package {exc.name!r}, which is not installed.", file=sys.stderr)
        else:
            print(f"{PROG} lm-adapt: error: this installation of softprompt-ext has no LM-adaptation module "
                  "(softprompt_ext.training.lm_adapt); upgrade softprompt-ext.", file=sys.stderr)
        return 2
    result = module.main(argv)
    return result if isinstance(result, int) else 0


# ---------------------------------------------------------------------------------------------- helpers
class _quiet_transformers:
    """Silence transformers' info logs and progress bars while a command runs (restored afterwards)."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._logging = hf_logging
        self._verbosity = hf_logging.get_verbosity()
        self._bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc_info: object) -> None:
        self._logging.set_verbosity(self._verbosity)
        if self._bars:
            self._logging.enable_progress_bar()


def _one_line(exc: object) -> str:
    return _safe(" ".join(str(exc).split()) or type(exc).__name__)


def _safe(text: str) -> str:
    """`text` with every non-printable character escaped (`\x1b`, `\n`, `\u202e`): nothing that reaches the
    terminal can move the cursor, recolour it, set its title or start a fake line."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _human(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"

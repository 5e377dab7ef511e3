"""Run PEFT's own prompt-tuning test cases twice: as PEFT ships them, and with SoftPromptConfig in their place.

    python scripts/peft_suite/run.py                      # both variants (3 to 4.5 minutes on 2 cores)
    python scripts/peft_suite/run.py --variant softprompt # one variant
    python scripts/peft_suite/run.py -- -x -k generate    # extra pytest arguments after --
    python scripts/peft_suite/run.py --matrix             # oldest and newest PEFT/transformers pyproject allows
    python scripts/peft_suite/run.py --newest             # the newest the registry has, ignoring our pin
    python scripts/peft_suite/run.py --table              # the intended-differences table (CONTRIBUTING.md)

Steps (everything lands under the cache folder, default `.cache/peft_suite/`, gitignored):
1. `pip download` the sdist of the installed PEFT version and extract it (its `tests/` is what runs; PEFT's
   files are not edited: the sdist leaves out the `tests/__init__.py` that PEFT's repository has, so an empty
   one is added to make `from .testing_common import ...` work).
2. Build the tiny models, tokenizers, LoRA config and dataset the cases load, into an offline HF cache under
   the same Hub ids (`build_models.py`; built once per transformers version).
3. Per variant, run pytest on PEFT's test files with `plugin.py`, which keeps the prompt-tuning cases only,
   swaps in SoftPromptConfig for the softprompt variant and applies `expectations.py`. HF_HUB_OFFLINE=1 and a
   dead HF_ENDPOINT: nothing reaches the network.
4. Print per variant: cases run, passed, failed, xfailed (intended differences / upstream bugs), skipped; exit
   1 on any unexpected failure (including a strict xfail that passed), else 0.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.dirname(HERE)
REPO = os.path.dirname(SCRIPTS)
DEFAULT_CACHE = os.path.join(REPO, ".cache", "peft_suite")
TEST_FILES = ("test_encoder_decoder_models.py", "test_decoder_models.py", "test_seq_classifier.py", "test_config.py")
VARIANTS = ("peft", "softprompt")
# oldest and newest releases that pyproject.toml allows (peft>=0.21.2,<0.23; transformers>=5.23,<6); a test
# checks that pyproject's lower bounds are the first pair
MATRIX = (("0.21.2", "5.23.0"), ("0.22.0", "5.25.0"))
# softprompt-ext's own pins of PEFT's behaviour, run in each matrix virtualenv before PEFT's suite
CONTRACT_TESTS = ("tests/test_peft_contract.py", "tests/test_peft_internals.py")
TORCH = "torch==2.13.0"  # the CPU build on this machine's disk (plain `torch` pulls a multi-GB CUDA build)


def log(message: str) -> None:
    print(f"peft_suite: {message}", flush=True)


# ---------------------------------------------------------------------------------------------- sdist
def fetch_sdist(version: str, cache: str, python: str = sys.executable) -> str:
    """Download and extract peft's sdist; return the extracted folder (holding `tests/`)."""
    src = os.path.join(cache, "src", f"peft-{version}")
    if os.path.isfile(os.path.join(src, "tests", "__init__.py")):
        return src
    sdists = os.path.join(cache, "sdist")
    archive = os.path.join(sdists, f"peft-{version}.tar.gz")
    if not os.path.isfile(archive):
        log(f"downloading the sdist of peft {version}")
        subprocess.run([python, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"peft=={version}", "-d", sdists], check=True)
    os.makedirs(os.path.dirname(src), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(src)) as tmp:
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        extracted = os.path.join(tmp, f"peft-{version}")
        if not os.path.isdir(os.path.join(extracted, "tests")):
            raise SystemExit(f"peft_suite: {archive} has no tests/ folder")
        # PEFT's repository has an empty tests/__init__.py; the sdist leaves it out
        open(os.path.join(extracted, "tests", "__init__.py"), "w").close()
        shutil.rmtree(src, ignore_errors=True)
        os.replace(extracted, src)
    return src


# ---------------------------------------------------------------------------------------------- running
def suite_env(hf_home: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HOME=hf_home,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        # PEFT's `hub_online_once` turns offline mode off for a model's first use; a dead endpoint makes that
        # first request fail at once, and huggingface_hub falls back to the cache
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        # this checkout's softprompt_ext and the plugin, ahead of any installed copy
        PYTHONPATH=os.pathsep.join([SCRIPTS, REPO] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])),
    )
    env.pop("HF_TOKEN", None)
    return env


def run_variant(variant: str, src: str, hf_home: str, cache: str, python: str, extra: list[str]) -> dict:
    sys.path.insert(0, SCRIPTS)
    from peft_suite.expectations import WARNING_FILTERS

    report = os.path.join(cache, f"report-{variant}.json")
    if os.path.exists(report):
        os.remove(report)
    cmd = [
        python, "-m", "pytest", *[os.path.join("tests", f) for f in TEST_FILES],
        "-p", "peft_suite.plugin", f"--peft-suite-variant={variant}", f"--peft-suite-report={report}",
        "-o", "addopts=",  # PEFT's addopts ask for pytest-cov; its filterwarnings and markers stay
        *[arg for spec, _ in WARNING_FILTERS for arg in ("-W", spec)],
        "-p", "no:cacheprovider", "-q", "-rfE", "--no-header", "--tb=line", *extra,
    ]
    log(f"variant {variant}: {' '.join(cmd[1:])}")
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=src, env=suite_env(hf_home))
    elapsed = time.monotonic() - start
    if not os.path.exists(report):
        raise SystemExit(f"peft_suite: pytest exited {proc.returncode} without a report (variant {variant})")
    with open(report) as f:
        data = json.load(f)
    data["seconds"] = round(elapsed, 1)
    data["returncode"] = proc.returncode
    return data


def summarize(data: dict) -> tuple[str, list[dict]]:
    counts = Counter(r["outcome"] for r in data["results"])
    bad = [r for r in data["results"] if r["outcome"] in ("failed", "error", "xpassed_strict", "xpassed")]
    line = (f"{data['variant']:>10}: {len(data['results'])} cases run, {counts['passed']} passed, "
            f"{counts['failed'] + counts['error']} failed, {counts['xfailed']} xfailed, "
            f"{counts['xpassed_strict'] + counts['xpassed']} unexpectedly passed, {counts['skipped']} skipped "
            f"({data['seconds']} s; peft {data['peft']}, transformers {data['transformers']})")
    return line, bad


def run_suite(args: argparse.Namespace, python: str = sys.executable, label: str = "") -> int:
    cache = os.path.abspath(args.cache_dir)
    peft_version, tf_version = installed_versions(python)
    src = fetch_sdist(peft_version, cache, python)
    hf_home = os.path.join(cache, "hf", f"transformers-{tf_version}")
    env = suite_env(hf_home)
    subprocess.run([python, os.path.join(HERE, "build_models.py"), "--hf_home", hf_home], check=True, env=env)
    results = [run_variant(v, src, hf_home, cache, python, args.pytest_args) for v in args.variant]
    print()
    failed = False
    for data in results:
        line, bad = summarize(data)
        print(f"peft_suite{label}: {line}")
        for r in bad:
            failed = True
            print(f"    {r['outcome'].upper()} {r['nodeid']}\n        {r['message']}")
        if data["returncode"] not in (0, 5) and not bad:  # 5: nothing collected
            failed = True
            print(f"    pytest exited {data['returncode']}")
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------- matrix
def make_venv(venv: str, requirements: list[str], upgrade: list[str] = ()) -> bool:
    """A fresh virtualenv with the CPU torch, this checkout (editable, `[test]`) and `requirements`; then
    `upgrade` installed on top with `--upgrade`, which ignores this checkout's pins (pip warns, and keeps them)."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    python = os.path.join(venv, "bin", "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [[*pip, TORCH], [*pip, "-e", f"{REPO}[test]", *requirements]]
    if upgrade:
        steps.append([*pip, "--upgrade", *upgrade])
    return all(subprocess.run(step).returncode == 0 for step in steps)


def run_contract_tests(python: str, label: str) -> int:
    """softprompt-ext's pins of PEFT's behaviour (`CONTRACT_TESTS`) with `python`; 0 when they pass."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CONTRACT_TESTS],
                            cwd=REPO, env=env)
    log(f"{label}: contract tests {'passed' if result.returncode == 0 else 'FAILED'}")
    return 0 if result.returncode == 0 else 1


def installed_versions(python: str) -> tuple[str, str]:
    out = subprocess.run([python, "-c", "import peft, transformers; print(peft.__version__, transformers.__version__)"],
                         check=True, capture_output=True, text=True).stdout.split()
    return out[0], out[1]


def run_matrix(args: argparse.Namespace) -> int:
    """A throwaway virtualenv per (peft, transformers) pair; the contract tests and the suite run in each."""
    cache = os.path.abspath(args.cache_dir)
    status = 0
    for peft_version, tf_version in MATRIX:
        label = f"[peft {peft_version} + transformers {tf_version}]"
        venv = os.path.join(cache, "venvs", f"peft-{peft_version}-transformers-{tf_version}")
        start = time.monotonic()
        if not make_venv(venv, [f"peft=={peft_version}", f"transformers=={tf_version}"]):
            log(f"{label}: cannot install ({time.monotonic() - start:.0f} s)")
            status = 1
            continue
        log(f"{label}: installed in {time.monotonic() - start:.0f} s")
        python = os.path.join(venv, "bin", "python")
        result = run_contract_tests(python, label) | run_suite(args, python=python, label=label)
        log(f"{label}: {'ok' if result == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s with the install")
        status |= result
        if not args.keep_venvs:
            shutil.rmtree(venv, ignore_errors=True)
    return status


def run_newest(args: argparse.Namespace) -> int:
    """The newest peft and transformers the registry serves, whatever pyproject.toml allows: run before widening a
    pin. Prints the versions, then what fails (contract tests, then PEFT's suite); exit 1 when anything does."""
    venv = os.path.join(os.path.abspath(args.cache_dir), "venvs", "newest")
    start = time.monotonic()
    if not make_venv(venv, [], upgrade=["peft", "transformers"]):
        log(f"[newest]: cannot install ({time.monotonic() - start:.0f} s)")
        return 1
    python = os.path.join(venv, "bin", "python")
    peft_version, tf_version = installed_versions(python)
    label = f"[newest: peft {peft_version} + transformers {tf_version}]"
    log(f"{label}: installed in {time.monotonic() - start:.0f} s")
    status = run_contract_tests(python, label) | run_suite(args, python=python, label=label)
    log(f"{label}: {'nothing breaks' if status == 0 else 'FAILED (see above)'}")
    if not args.keep_venvs:
        shutil.rmtree(venv, ignore_errors=True)
    return status


# ---------------------------------------------------------------------------------------------- table
def table() -> str:
    """CONTRIBUTING.md's two tables (intended differences; upstream bugs and environment skips), from expectations.py."""
    sys.path.insert(0, SCRIPTS)
    from peft_suite.expectations import EXPECTATIONS

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = ["| Case (PEFT's tests) | PEFT | softprompt-ext | Why |", "|---|---|---|---|"]
    rows += [f"| `{e.case}` | {cell(e.peft)} | {cell(e.ours)} | {cell(e.why)} |" for e in EXPECTATIONS if e.kind == "intended"]
    rows += ["", "Upstream bugs (they fail with PEFT's own class too) and what the harness cannot provide (skipped):", "",
             "| Case (PEFT's tests) | Kind, variants, versions | What happens | Why | Link |", "|---|---|---|---|---|"]
    for e in EXPECTATIONS:
        if e.kind != "intended":
            scope = f"{e.kind} ({e.requires}), " if e.requires else f"{e.kind}, "
            scope += "both" if len(e.variants) == 2 else e.variants[0]
            scope += f", transformers{e.transformers}" if e.transformers else ""
            scope += f", peft{e.peft_versions}" if e.peft_versions else ""
            rows.append(f"| `{e.case}` | {scope} | {cell(e.peft)} | {cell(e.why)} | {cell(e.link or '-')} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, action="append", help="default: both")
    parser.add_argument("--cache_dir", default=os.environ.get("PEFT_SUITE_CACHE", DEFAULT_CACHE))
    parser.add_argument("--matrix", action="store_true", help="run in fresh virtualenvs for the oldest and newest versions")
    parser.add_argument("--matrix_only", choices=("oldest", "newest"), help="with --matrix: one combination")
    parser.add_argument("--newest", action="store_true",
                        help="in a scratch virtualenv, the newest peft/transformers the registry has, ignoring the pin")
    parser.add_argument("--keep_venvs", action="store_true", help="with --matrix/--newest: keep the virtualenvs")
    parser.add_argument("--table", action="store_true", help="print CONTRIBUTING.md's tables (from expectations.py) and exit")
    args = parser.parse_args(argv)
    args.variant = args.variant or list(VARIANTS)
    args.pytest_args = extra
    if args.table:
        print(table())
        return 0
    if args.newest:
        return run_newest(args)
    if args.matrix:
        global MATRIX
        if args.matrix_only:
            MATRIX = (MATRIX[0],) if args.matrix_only == "oldest" else (MATRIX[-1],)
        return run_matrix(args)
    start = time.monotonic()
    status = run_suite(args)
    log(f"{'ok' if status == 0 else 'FAILED'} in {time.monotonic() - start:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())

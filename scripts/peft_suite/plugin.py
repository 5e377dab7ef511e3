"""pytest plugin for PEFT's own test files: picks the prompt-tuning cases, swaps in SoftPromptConfig, applies
the expectations table, and writes a JSON report for `run.py`.

Loaded with `-p peft_suite.plugin` (the `scripts/` folder on PYTHONPATH) in a pytest run over the test files of
PEFT's sdist. It never edits PEFT's files or replaces a PEFT function:

* `--peft-suite-variant=peft`: the cases run as PEFT ships them; softprompt_ext is not imported.
* `--peft-suite-variant=softprompt`: in `pytest_configure` (before any test module is imported) it imports
  softprompt_ext (which fills PEFT's PROMPT_TUNING registry slots, as for a user) and sets the attribute
  `peft.PromptTuningConfig = softprompt_ext.SoftPromptConfig` on the top-level `peft` namespace, so that the
  test modules' `from peft import PromptTuningConfig` bind our class. PEFT's own modules keep the real class
  (they imported it long before); SoftPromptConfig subclasses it, so PEFT's isinstance checks still hold.
* Selection: a case is a prompt-tuning case when its `config_cls` / `config_class` parameter is the (possibly
  swapped) PromptTuningConfig, or, for a test without that parameter, when its name says "prompt_tuning" or it
  is listed in `expectations.EXTRA_TESTS`. Everything else is deselected.
* test_config.py's table of mandatory kwargs gets SoftPromptConfig's mandatory `task_type` in the softprompt
  variant (see `expectations.SOFTPROMPT_MANDATORY_KWARGS`).
* Expectations: a selected case whose case id matches an entry of `expectations.EXPECTATIONS` for this variant
  gets `xfail(strict=True, reason=...)` (kinds "intended" and "upstream": it must fail, and an unexpected pass
  fails the run) or `skip(reason=...)` (kind "environment": it needs the real Hub, which this harness never
  reaches, or a module that is not installed).
* Offline: PEFT's `testing_utils.hub_online_once(model_id)` turns offline mode *off* for the first use of a
  model id in the session (its `_HUB_MODEL_ACCESSES` dict records the ids "already fetched") and on for later
  uses. Every id here is already in the local cache (`build_models.py`), so before the first case runs the
  plugin replaces that dict with one that answers "already fetched" for every id: the context manager then
  keeps offline mode on, as it does upstream from a model's second use on. (Without this huggingface_hub tries
  the network, retries with back-off for ~25 s per file, then fails.)
* A missing optional dependency of PEFT's test helpers that the prompt-tuning cases never use (`diffusers`,
  imported at the top of testing_common.py for its Stable Diffusion cases) is stood in for by an empty module
  whose classes no object is an instance of.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import sys
import types

import pytest

from peft_suite.expectations import EXPECTATIONS, EXTRA_TESTS, SOFTPROMPT_MANDATORY_KWARGS, case_id, matching

VARIANTS = ("peft", "softprompt")
_STATE: dict = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("peft_suite", "softprompt-ext: PEFT's prompt-tuning cases")
    group.addoption("--peft-suite-variant", choices=VARIANTS, default="peft",
                    help="peft: PEFT's own PromptTuningConfig; softprompt: softprompt_ext.SoftPromptConfig in its place")
    group.addoption("--peft-suite-report", default=None, help="write the per-case outcomes as JSON here")
    group.addoption("--peft-suite-no-expectations", action="store_true",
                    help="do not apply the expectations table (see every failure as it is)")


def _stub_missing_module(name: str, classes: tuple[str, ...]) -> None:
    if name in sys.modules or importlib.util.find_spec(name) is not None:
        return
    module = types.ModuleType(name)
    module.__doc__ = "Stand-in from scripts/peft_suite/plugin.py: not installed, unused by prompt-tuning cases."
    for cls in classes:
        setattr(module, cls, type(cls, (), {}))
    sys.modules[name] = module


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    variant = config.getoption("--peft-suite-variant")
    _stub_missing_module("diffusers", ("StableDiffusionPipeline",))
    import peft

    real = peft.PromptTuningConfig
    if variant == "softprompt":
        import softprompt_ext
        from softprompt_ext import SoftPromptConfig

        peft.PromptTuningConfig = SoftPromptConfig
        prompt_cls = SoftPromptConfig
        origin = os.path.dirname(softprompt_ext.__file__)
    else:
        if "softprompt_ext" in sys.modules:
            raise pytest.UsageError("variant 'peft' must run without softprompt_ext imported")
        prompt_cls = real
        origin = None
    _STATE.update(variant=variant, prompt_cls=prompt_cls, real=real, results=[], origin=origin)
    config.addinivalue_line("markers", "peft_suite: a prompt-tuning case selected by scripts/peft_suite")


def pytest_report_header(config: pytest.Config) -> list[str]:
    import peft
    import transformers

    line = f"peft_suite: variant={_STATE['variant']} peft={peft.__version__} transformers={transformers.__version__}"
    if _STATE["origin"]:
        line += f" softprompt_ext from {_STATE['origin']}"
    return [line]


def _is_prompt_tuning_case(item: pytest.Item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in ("config_cls", "config_class"):
        if name in params:
            return params[name] is _STATE["prompt_cls"]
    function = getattr(item, "originalname", None) or item.name
    return "prompt_tuning" in function or (os.path.basename(str(item.path)), function) in EXTRA_TESTS


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    selected, deselected = [], []
    for item in items:
        (selected if _is_prompt_tuning_case(item) else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected
    if _STATE["variant"] == "softprompt":
        for item in selected:
            _add_mandatory_kwargs(item)
    if config.getoption("--peft-suite-no-expectations"):
        return
    import peft
    import transformers

    variant = _STATE["variant"]
    for item in selected:
        for entry in matching(case_id(item.nodeid), variant, transformers.__version__, peft.__version__):
            reason = f"[{entry.kind}] {entry.why}"
            if entry.kind == "environment":
                if _missing(entry.requires):
                    item.add_marker(pytest.mark.skip(reason=f"needs {entry.requires}: {reason}"))
                    break
                continue
            item.add_marker(pytest.mark.xfail(strict=True, reason=reason))
            break


def _missing(requirement: str) -> bool:
    """'network' is never there (HF_HUB_OFFLINE=1, dead HF_ENDPOINT); a module is there when importable."""
    return requirement == "network" or importlib.util.find_spec(requirement) is None


class _EverythingCached(dict):
    """`_HUB_MODEL_ACCESSES` for a session whose Hub cache was filled beforehand: every id counts as fetched."""

    def __contains__(self, key: object) -> bool:
        return True

    def __missing__(self, key: str) -> int:
        return 0


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    for name, module in list(sys.modules.items()):
        if name.split(".")[-1] == "testing_utils" and hasattr(module, "_HUB_MODEL_ACCESSES"):
            module._HUB_MODEL_ACCESSES = _EverythingCached(module._HUB_MODEL_ACCESSES)


def _add_mandatory_kwargs(item: pytest.Item) -> None:
    """test_config.py's `mandatory_kwargs` for SoftPromptConfig: see expectations.SOFTPROMPT_MANDATORY_KWARGS."""
    params = getattr(getattr(item, "callspec", None), "params", None)
    if not params or params.get("config_class") is not _STATE["prompt_cls"] or params.get("mandatory_kwargs") != {}:
        return
    if "task_type=" in inspect.getsource(item.function):
        return  # the test passes task_type itself (test_valid_task_type, test_invalid_task_type)
    # direct parameters reach the test through callspec.params at setup time
    params["mandatory_kwargs"] = dict(SOFTPROMPT_MANDATORY_KWARGS)


def _error_line(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:  # an assertion's first line is often just "assert False": keep its explanation
        return " / ".join(line.strip() for line in crash.message.strip().splitlines()[:3])[:600]
    text = str(report.longrepr or "").strip()
    return text.splitlines()[-1][:400] if text else ""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and not report.passed):
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        elif report.passed:
            outcome = "passed"
        elif report.skipped:
            outcome = "skipped"
        else:
            outcome = "failed" if report.when == "call" else "error"
        message = "" if outcome == "passed" else _error_line(report)
        if report.failed and "[XPASS(strict)]" in str(report.longrepr):
            outcome, message = "xpassed_strict", str(report.longrepr).strip()
        _STATE["results"].append({
            "nodeid": report.nodeid, "case": case_id(report.nodeid), "outcome": outcome,
            "message": message, "duration": round(report.duration, 3),
        })
    elif report.when == "teardown" and report.failed:
        _STATE["results"].append({
            "nodeid": report.nodeid, "case": case_id(report.nodeid), "outcome": "error",
            "message": "teardown: " + _error_line(report), "duration": round(report.duration, 3),
        })


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--peft-suite-report")
    if not path:
        return
    import peft
    import transformers

    with open(path, "w") as f:
        json.dump({
            "variant": _STATE["variant"], "peft": peft.__version__, "transformers": transformers.__version__,
            "exitstatus": int(exitstatus), "results": _STATE["results"],
            "expectations": len(EXPECTATIONS),
        }, f, indent=1)

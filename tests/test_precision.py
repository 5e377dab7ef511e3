"""softprompt_ext.precision: bf16 autocast only where the hardware has bf16 units, either precision on request.

Every test holds on CPUs with and without bf16 units: "auto" is tested with `bf16_is_fast` monkeypatched both
ways, and the hardware's own answer is only compared with what "auto" resolves to.
"""

from __future__ import annotations

import re

import pytest
import torch
from helpers import prompt_grad, prompt_model

from softprompt_ext import precision
from softprompt_ext.precision import autocast, bf16_autocast, bf16_is_fast, resolve_precision


def _fast(monkeypatch, answer: bool) -> list[torch.device]:
    """Make `bf16_is_fast` answer `answer`; returns the devices it is asked about."""
    asked: list[torch.device] = []

    def bf16_is_fast(device="cpu"):
        asked.append(torch.device(device))
        return answer

    monkeypatch.setattr(precision, "bf16_is_fast", bf16_is_fast)
    return asked


# ------------------------------------------------------------------------------------- bf16 autocast
def test_bf16_is_fast_answers_false_where_there_is_no_device():
    assert isinstance(bf16_is_fast("cpu"), bool)
    assert bf16_is_fast("meta") is False
    if not torch.cuda.is_available():
        assert bf16_is_fast("cuda") is False


@pytest.mark.parametrize("enabled", [True, False])
def test_bf16_autocast_turns_autocast_on_only_when_asked(enabled):
    with bf16_autocast("cpu", enabled=enabled) as on:
        assert on is enabled
        assert torch.is_autocast_enabled("cpu") is enabled
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == (torch.bfloat16 if enabled else torch.float32)
    assert torch.is_autocast_enabled("cpu") is False


def test_bf16_autocast_by_default_follows_the_hardware():
    with bf16_autocast("cpu") as on:
        assert on is bf16_is_fast("cpu")


def test_bf16_autocast_rejects_a_non_boolean_switch():
    with pytest.raises(TypeError, match="enabled must be True, False or None, got 'yes'"):
        with bf16_autocast("cpu", enabled="yes"):
            pass


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_bf16_autocast_keeps_loss_and_prompt_gradient_close_to_fp32(make_model, tokenizer, kind):
    model = prompt_model(make_model, kind).eval()  # no dropout: both passes see the same network
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, len(tokenizer), (4, 12), generator=gen)
    labels = torch.randint(3, len(tokenizer), (4, 3), generator=gen) if kind == "t5" else ids
    loss32 = model(input_ids=ids, labels=labels).loss
    grad32 = prompt_grad(model, loss32)
    with bf16_autocast("cpu", enabled=True):
        loss16 = model(input_ids=ids, labels=labels).loss
    grad16 = prompt_grad(model, loss16)
    assert grad16.dtype == torch.float32  # the prompt and its gradient stay float32
    torch.testing.assert_close(loss16.float(), loss32, rtol=2e-2, atol=0.0)
    cosine = torch.nn.functional.cosine_similarity(grad16.flatten(), grad32.flatten(), dim=0)
    assert cosine > 0.99


# ------------------------------------------------------------------------------------- resolve_precision
def test_auto_is_what_the_hardware_answers():
    expected = "bf16" if bf16_is_fast("cpu") else "fp32"
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision() == expected  # the defaults: "auto" on the CPU


@pytest.mark.parametrize(("fast", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_exactly_when_bf16_is_fast(monkeypatch, fast, expected):
    asked = _fast(monkeypatch, fast)
    assert resolve_precision("auto", "cpu") == expected
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert asked == [torch.device("cpu")] * 2  # the device asked about is the one given


@pytest.mark.parametrize("forced", ["fp32", "bf16"])
@pytest.mark.parametrize("fast", [True, False])
def test_fp32_and_bf16_are_forced_whatever_the_hardware(monkeypatch, forced, fast):
    asked = _fast(monkeypatch, fast)
    assert resolve_precision(forced, "cpu") == forced
    assert asked == []  # a forced precision does not ask the hardware


@pytest.mark.parametrize("bad", ["fp16", "BF16", "", None])
def test_an_unknown_precision_is_refused_naming_the_value(bad):
    message = (
        f"precision={bad!r} is not known; use one of ('auto', 'fp32', 'bf16') ('auto' picks bf16 only where "
        "the device has bf16 units)."
    )
    with pytest.raises(ValueError, match=rf"^{re.escape(message)}$"):
        resolve_precision(bad)
    with pytest.raises(ValueError, match=re.escape(f"precision={bad!r} is not known")):
        with autocast("cpu", bad):
            pass


# ------------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize(("chosen", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")], ids=["str", "torch.device"])
def test_autocast_yields_the_chosen_precision_and_runs_matmuls_in_it(chosen, dtype, device):
    with autocast(device, chosen) as got:
        assert got == chosen
        assert torch.is_autocast_enabled("cpu") is (chosen == "bf16")
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert product.dtype == dtype
    assert torch.is_autocast_enabled("cpu") is False


@pytest.mark.parametrize(
    ("fast", "chosen", "dtype"), [(True, "bf16", torch.bfloat16), (False, "fp32", torch.float32)], ids=["fast", "slow"]
)
def test_autocast_auto_follows_bf16_is_fast(monkeypatch, fast, chosen, dtype):
    _fast(monkeypatch, fast)
    with autocast("cpu") as got:  # precision defaults to "auto"
        product = torch.ones(2, 2) @ torch.ones(2, 2)
    assert got == chosen
    assert product.dtype == dtype
    with bf16_autocast("cpu") as on:  # enabled=None is "auto" too
        assert on is fast


def test_cpu_model_and_describe_read_cpuinfo_and_fall_back_where_there_is_none(monkeypatch, tmp_path):
    import builtins
    import platform

    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f\n\n"
                    "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f\n")
    real_open = builtins.open

    def cpuinfo_at(path):
        def fake_open(name, *args, **kwargs):
            if name == "/proc/cpuinfo":
                if path is None:
                    raise OSError("no /proc here")
                name = path
            return real_open(name, *args, **kwargs)
        return fake_open

    monkeypatch.setattr(builtins, "open", cpuinfo_at(str(fake)))
    assert precision.cpu_model() == "Test CPU 9000"
    assert precision.describe().startswith("cpu: Test CPU 9000; avx2 yes, avx512f yes, avx512_bf16 no, amx_bf16 no;")
    monkeypatch.setattr(builtins, "open", cpuinfo_at(None))
    assert precision.cpu_model() == (platform.processor() or platform.machine())
    assert "avx2 no" in precision.describe()

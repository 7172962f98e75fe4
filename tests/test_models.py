"""privlm.models: dtype choice, and the warning for half precision on a CPU that only emulates it."""
import pytest
import torch

from privlm import models
from privlm.errors import UserError


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(models, "_warned", set())

    def flags(fs):
        monkeypatch.setattr(models, "cpu_flags", lambda: set(fs))
    return flags


def test_auto_is_float32_on_cpu_and_names_force_a_choice(cpu_only):
    cpu_only({"avx512_bf16"})
    assert models.pick_dtype("auto") == torch.float32
    assert models.pick_dtype("bf16") == models.pick_dtype("bfloat16") == torch.bfloat16
    assert models.pick_dtype("fp16") == torch.float16
    with pytest.raises(UserError, match="dtype: expected auto"):
        models.pick_dtype("int8")


def test_bf16_on_a_cpu_without_native_bf16_warns_once(cpu_only, capsys):
    cpu_only({"avx", "avx2", "fma"})
    assert models.pick_dtype("bfloat16") == torch.bfloat16  # a warning, not a refusal: the user asked for it
    models.pick_dtype("bfloat16")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "no native bf16" in err and "--bf16" in err
    models.pick_dtype("float16")
    assert "no native fp16" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [{"avx2", "avx512_bf16"}, {"avx2", "amx_bf16"}, {"asimd", "bf16"}, set()])
def test_no_warning_where_bf16_is_native_or_the_flags_are_unknown(cpu_only, capsys, flags):
    cpu_only(flags)
    models.pick_dtype("bfloat16")
    models.pick_dtype("float32")
    assert capsys.readouterr().err == ""


def test_cpu_flags_reads_this_machine():
    flags = models.cpu_flags()
    assert isinstance(flags, set) and all(isinstance(f, str) and f for f in flags)


def test_where_names_the_device_and_precision(tiny):
    model, _ = tiny
    w = models.where(model)
    assert w["dtype"] == "float32" and w["device"].startswith("cpu: ") and w["device"].endswith(" cores")

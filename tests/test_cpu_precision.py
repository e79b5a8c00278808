"""bf16 autocast on CPUs that compute bf16 natively, float32 elsewhere, and attention kept in
float32 on the CPU under it (issue 19)."""
from __future__ import annotations

import contextlib

import pytest
import torch

from tunesam import device as D
from tunesam.models.common import attention


@pytest.mark.parametrize(("value", "native", "expected"), [("0", True, "fp32"), ("1", False, "bf16"),
                                                           ("", True, "bf16"), ("", False, "fp32")])
def test_the_cpu_precision_follows_the_cpu_and_the_override(monkeypatch: pytest.MonkeyPatch, value: str,
                                                            native: bool, expected: str) -> None:
    monkeypatch.setenv(D.CPU_BF16_ENV, value)
    monkeypatch.setattr(D, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert D.precision_for(cpu) == expected
    cast = D.autocast_for(cpu)
    assert isinstance(cast, torch.autocast) == (expected == "bf16")
    assert D.precision_for(torch.device("cuda")) == "bf16"


def test_a_bad_override_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(D.CPU_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="TUNESAM_CPU_BF16 must be 0"):
        D.precision_for(torch.device("cpu"))


SAPPHIRE = "processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile avx512_bf16\nbugs\t\t: spectre_v1\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 sha_ni\nbugs\t\t: sysret_ss_attrs\n"
COOPER = "flags : fpu avx512f avx512_bf16\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.mark.parametrize(("text", "native"), [(SAPPHIRE, True), (ZEN3, False), (COOPER, True), (ARM, False),
                                              ("", False), ("flags\t: avx512f\nbugs : amx_bf16\n", False)])
def test_native_bf16_is_read_from_the_flags_line(text: str, native: bool) -> None:
    assert D.native_bf16_in(text) is native


@pytest.mark.parametrize("cast", [True, False])
def test_cpu_attention_runs_in_float32_under_bf16_autocast(cast: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kw: object) -> torch.Tensor:
        out = real(q, k, v, **kw)
        seen.append((q.dtype, kw["attn_mask"].dtype, out.dtype, torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, 49, 16) for _ in range(3))
    bias = torch.randn(1, 2, 49, 49)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if cast else contextlib.nullcontext()
    with ctx:
        out = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), bias)
    # float32 inputs, and autocast off so that it does not recast them to bf16 inside the op
    assert seen == [(torch.float32, torch.float32, torch.float32, False)]
    assert out.dtype == torch.bfloat16  # handed back in the inputs' dtype
    ref = real(q.bfloat16().float(), k.bfloat16().float(), v.bfloat16().float(), attn_mask=bias)
    torch.testing.assert_close(out.float(), ref, atol=8e-3, rtol=8e-3)

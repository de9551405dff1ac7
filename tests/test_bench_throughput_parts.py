"""The pure parts of bench/throughput.py: the nominal peak from /proc/cpuinfo, and the profile summary."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from throughput import profile_steps, theoretical_peak  # noqa: E402


def cpuinfo(vendor: str, flags: str, mhz: str = "2500.000", family: int = 25) -> str:
    return (f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\ncpu MHz\t\t: {mhz}\n"
            f"flags\t\t: fpu {flags}\n\nprocessor\t: 1\n")


@pytest.mark.parametrize("vendor, flags, dtype, per_cycle", [
    ("GenuineIntel", "avx2 avx512f avx512_bf16 amx_bf16", torch.bfloat16, 1024),
    ("GenuineIntel", "avx2 avx512f avx512_bf16 amx_bf16", torch.float32, 64),
    ("AuthenticAMD", "avx2 avx512f avx512_bf16", torch.bfloat16, 64),
    ("AuthenticAMD", "avx2 avx512f avx512_bf16", torch.float32, 32),
    ("AuthenticAMD", "avx2 fma", torch.float32, 32),
])
def test_theoretical_peak_is_threads_times_clock_times_flops_per_cycle(vendor, flags, dtype, per_cycle):
    peak = theoretical_peak(dtype, cpuinfo(vendor, flags), threads=2)
    assert peak["flops_per_cycle_per_core"] == per_cycle
    assert peak["flops_per_s"] == 2 * 2500e6 * per_cycle


@pytest.mark.parametrize("dtype, per_cycle", [(torch.float32, 64), (torch.bfloat16, 128)])
def test_zen5_counts_full_width_avx512_pipes(dtype, per_cycle):
    peak = theoretical_peak(dtype, cpuinfo("AuthenticAMD", "avx2 avx512f avx512_bf16", family=26), threads=2)
    assert peak["flops_per_cycle_per_core"] == per_cycle


def test_theoretical_peak_is_none_for_emulated_bf16_or_an_unknown_clock():
    assert theoretical_peak(torch.bfloat16, cpuinfo("AuthenticAMD", "avx2 fma"), threads=2) is None
    assert theoretical_peak(torch.float32, "vendor_id\t: GenuineIntel\nflags\t: avx2\n", threads=2) is None


def test_profile_steps_splits_a_step_into_its_phases_and_kinds():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.LayerNorm(32))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 32)

    def step():
        with torch.profiler.record_function("forward"):
            loss = model(x).square().mean()
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
            opt.step()
            opt.zero_grad()
    prof = profile_steps(step, 2, top=5)
    assert set(prof["phase_share"]) == {"forward", "backward", "optimizer"}
    assert sum(prof["kind_share"].values()) == pytest.approx(1.0)
    assert {"matmul", "normalization"} <= set(prof["kind_share"])
    assert len(prof["top_ops"]) == 5 and prof["steps"] == 2

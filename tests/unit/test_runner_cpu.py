"""The CPU checks: extra buffer types off where ggml's AMX path crashes, bf16 where native."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave.runners.cpu import (
    cpu_path,
    describe_cpu,
    embed_dtype,
    extra_buffer_types,
    read_cpu_flags,
)

SAPPHIRE_RAPIDS = frozenset(
    "fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 amx_bf16 amx_tile amx_int8".split()  # noqa: SIM905
)
EPYC_GENOA = frozenset("fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni".split())  # noqa: SIM905
HASWELL = frozenset(["fpu", "sse2", "avx", "avx2"])


def test_amx_cpus_load_without_extra_buffer_types() -> None:
    decision = extra_buffer_types(SAPPHIRE_RAPIDS, "auto")
    assert decision.enabled is False
    assert "AMX" in decision.reason and "20824" in decision.reason
    assert cpu_path(SAPPHIRE_RAPIDS) == "AMX"


@pytest.mark.parametrize("flags", [EPYC_GENOA, HASWELL, frozenset()])
def test_cpus_without_amx_keep_extra_buffer_types(flags: frozenset[str]) -> None:
    assert extra_buffer_types(flags, "auto").enabled is True


def test_any_single_amx_flag_is_enough_to_switch_them_off() -> None:
    for flag in ("amx_tile", "amx_bf16", "amx_int8"):
        assert extra_buffer_types(HASWELL | {flag}).enabled is False


def test_the_setting_overrides_the_detection() -> None:
    assert extra_buffer_types(SAPPHIRE_RAPIDS, "on").enabled is True
    assert extra_buffer_types(HASWELL, "off").enabled is False


def test_paths_and_bf16() -> None:
    assert cpu_path(EPYC_GENOA) == "AVX-512"
    assert cpu_path(HASWELL) == "AVX2"
    assert cpu_path({"sse2"}) == "baseline"
    assert embed_dtype(SAPPHIRE_RAPIDS) == "bfloat16"
    assert embed_dtype(EPYC_GENOA) == "bfloat16"
    assert embed_dtype(HASWELL) == "float32"
    assert embed_dtype(EPYC_GENOA, "float32") == "float32"
    described = describe_cpu(SAPPHIRE_RAPIDS, extra_buffer_types(SAPPHIRE_RAPIDS))
    assert described["path"] == "AMX" and described["extra_buffer_types"] is False


def test_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_tile\n\nprocessor\t: 1\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_tile"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()

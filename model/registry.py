"""Maps an HF config's `model_type` (or, failing that, `architectures`) to the family that parses it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.families import gemma2, gemma3, llama, mistral, qwen2, qwen3
from tpuserve.model.families.common import Family

FAMILIES: dict[str, Family] = {
    m.FAMILY.name: m.FAMILY for m in (llama, mistral, qwen2, qwen3, gemma2, gemma3)
}
_BY_MODEL_TYPE = {t: f for f in FAMILIES.values() for t in f.model_types}
_BY_ARCHITECTURE = {a: f for f in FAMILIES.values() for a in f.architectures}


def family_for(hf_config: Mapping[str, Any]) -> Family:
    model_type = hf_config.get("model_type")
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    for arch in hf_config.get("architectures") or ():
        if arch in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[arch]
    supported = ", ".join(sorted(_BY_MODEL_TYPE))
    raise ModelLoadError(None, f"unsupported model_type '{model_type}' (supported: {supported})")

"""The model description all other parts read: sizes plus named per-family choices, parsed from HF config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tpuserve.model.errors import ModelLoadError
from tpuserve.model.layers.attention import AttentionSpec
from tpuserve.model.registry import family_for


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer; the bool/str fields pick building blocks instead of `model_type` checks."""

    family: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    layers: tuple[AttentionSpec, ...]  # one per decoder layer
    norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    activation: str = "silu"  # key of tpuserve.model.layers.mlp.ACTIVATIONS
    norm_unit_offset: bool = False  # Gemma RMSNorm: x * (1 + w)
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False  # RMSNorm over head_dim on q and k before RoPE (Qwen3, Gemma3)
    sandwich_norms: bool = False  # Gemma: norms after attention and around the MLP as well
    scale_embeddings: bool = False  # Gemma: embeddings times sqrt(hidden_size)
    tie_embeddings: bool = False
    final_soft_cap: float | None = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ModelLoadError(None, f"num_attention_heads {self.num_heads} is not a multiple of "
                                       f"num_key_value_heads {self.num_kv_heads}")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_hf(cls, hf_config: Mapping[str, Any], source: str | None = None) -> ModelConfig:
        """Parses an HF `config.json` dict (transformers 4.x or 5.x keys); `source` names it in errors."""
        try:
            family = family_for(hf_config)
            return cls(family=family.name, **family.parse(family.text_config(hf_config)))
        except ModelLoadError as err:
            raise ModelLoadError(source, err.problem) from None
        except KeyError as err:
            raise ModelLoadError(source, f"config is missing required key {err}") from None
        except (TypeError, ValueError) as err:
            raise ModelLoadError(source, f"invalid config value ({err})") from None

"""Tiny random llama, qwen3 and gemma2 checkpoints for the tensor-parallel tests, saved like users' models.

Head counts are chosen so tensor parallel sizes 2 and 4 cover both KV-head layouts: split evenly (qwen3's
4 KV heads at 2 and 4, gemma2's 2 at 2) and replicated at load (llama's 2 KV heads at 4); `smollm2_heads`
has SmolLM2's 9 query and 3 KV heads and tied embeddings, for a split over 3 devices. Odd vocabularies force
the vocab padding. Written with `transformers` (seeded), read back by our loader.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from tests.model.tiny_checkpoint import tiny_tokenizer

COMMON = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "head_dim": 16,
          "max_position_embeddings": 512}
FAMILIES: dict[str, tuple[type, type, dict[str, object]]] = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
              {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
               "tie_word_embeddings": False, "attention_bias": True}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              {"num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 101,
               "tie_word_embeddings": True}),
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               {"num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 103,
                "sliding_window": 8, "query_pre_attn_scalar": 24, "final_logit_softcapping": 3.0,
                "attn_logit_softcapping": 2.0}),
    "smollm2_heads": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                      {"hidden_size": 72, "intermediate_size": 144, "num_attention_heads": 9,
                       "num_key_value_heads": 3, "vocab_size": 107, "tie_word_embeddings": True}),
}


def write_family_checkpoint(family: str, directory: Path, seed: int = 0) -> Path:
    """Every tensor random (norms and biases too), so a mis-sharded or mis-copied one shows in the logits."""
    config_cls, model_cls, overrides = FAMILIES[family]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**(COMMON | overrides)))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory

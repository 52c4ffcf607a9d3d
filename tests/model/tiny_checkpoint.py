"""A tiny random Llama saved the way users' checkpoints are: `transformers` weights plus a tokenizer.

Shared by the loading, Orbax and CLI tests; the tokenizer is a word-level one built in memory so nothing
is downloaded, and it carries a chat template so conversions can be checked to keep it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

VOCAB = 97
CONFIG = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "vocab_size": VOCAB, "max_position_embeddings": 256,
          "tie_word_embeddings": False}
CHAT_TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
WORDS = ["<unk>", "<s>", "</s>", "user", "assistant", ":", "hello", "world", "tiny", "model"]


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", chat_template=CHAT_TEMPLATE)


def write_tiny_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Random weights (norms included, so a misplaced tensor shows in the logits) saved as safetensors."""
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    model.save_pretrained(directory)
    tiny_tokenizer().save_pretrained(directory)
    return directory


def hf_param_count(directory: Path) -> int:
    """Parameter count as transformers itself reports it, an independent check of `tpuserve info`."""
    return transformers.LlamaForCausalLM.from_pretrained(directory).num_parameters()


def random_tokens(seed: int, batch: int, length: int, vocab: int = VOCAB) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length), dtype=np.int32)

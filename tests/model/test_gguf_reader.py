"""GGUF -> Hugging Face config and tensors, and the one-line errors for bad files.

Each tiny random HF model is written to GGUF the way llama.cpp's `convert_hf_to_gguf.py` does it (llama.cpp's
own name table `gguf.get_tensor_name_map`, the Q/K row permute for llama, `1 + w` for Gemma norms), then read
back: every tensor must come back bit-exact under its HF name, and the config must describe the same model.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import transformers
from gguf import GGMLQuantizationType, GGUFWriter

from tpuserve.model.config import ModelConfig
from tpuserve.model.errors import ModelLoadError
from tpuserve.model.loaders.gguf import read_gguf

TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 97, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}
GEMMA = {"sliding_window": 8, "query_pre_attn_scalar": 16}  # llama.cpp scales queries by head_dim
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500_000.0, "factor": 32.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
# case -> (GGUF architecture, HF config class, HF model class, config overrides)
LLAMA = (transformers.LlamaConfig, transformers.LlamaForCausalLM)
CASES = {
    "llama": ("llama", *LLAMA, {"tie_word_embeddings": False}),
    "llama3-rope": ("llama", *LLAMA, {"tie_word_embeddings": True, "rope_parameters": LLAMA3_ROPE}),
    "qwen2": ("qwen2", transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              {"tie_word_embeddings": True}),
    "qwen3": ("qwen3", transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {}),
    "gemma2": ("gemma2", transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               {**GEMMA, "attn_logit_softcapping": 40.0, "final_logit_softcapping": 20.0}),
    "gemma3": ("gemma3", transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM, GEMMA),
}


def converter_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """`LlamaModel.permute` from convert_hf_to_gguf.py: each head's rows (2, d/2) -> (d/2, 2)."""
    per_head = weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
    return per_head.swapaxes(1, 2).reshape(weight.shape)


def converter_rope_factors(config: transformers.PretrainedConfig) -> np.ndarray:
    """`LlamaModel.generate_extra_tensors` from convert_hf_to_gguf.py: Llama 3 scaling as `rope_freqs`."""
    rope = config.rope_parameters
    dim, context = config.head_dim, rope["original_max_position_embeddings"]
    low, high, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
    factors = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi * rope["rope_theta"] ** (i / dim)
        if wavelen < context / high:
            factors.append(1.0)
        elif wavelen > context / low:
            factors.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def write_like_llama_cpp(model: transformers.PreTrainedModel, arch: str, path: Path) -> None:
    config = model.config
    writer = GGUFWriter(path, arch)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(config.head_dim)
    writer.add_value_length(config.head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rope = config.rope_parameters.get("full_attention", config.rope_parameters)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    if arch.startswith("gemma"):
        writer.add_sliding_window(config.sliding_window)
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    if rope.get("rope_type") == "llama3":
        writer.add_tensor("rope_freqs.weight", converter_rope_factors(config))

    (model_arch,) = [key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch]
    names = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        weight = tensor.float().numpy()
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if arch == "llama" and "q_proj" in name:
            weight = converter_permute(weight, config.num_attention_heads)
        if arch == "llama" and "k_proj" in name:
            weight = converter_permute(weight, config.num_key_value_heads)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            weight = weight + 1
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), weight)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module", params=list(CASES))
def converted(request, tmp_path_factory) -> tuple[transformers.PreTrainedModel, Path]:
    arch, config_cls, model_cls, extra = CASES[request.param]
    model = model_cls(config_cls(**TINY, **extra))
    for tensor in model.state_dict().values():  # HF inits norms to exactly 0 or 1: make every value distinct
        tensor.data.normal_()
    path = tmp_path_factory.mktemp(request.param) / "model.gguf"
    write_like_llama_cpp(model, arch, path)
    return model, path


def test_tensors_come_back_exactly_under_hf_names(converted):
    model, path = converted
    expected = {name: t.float().numpy() for name, t in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        del expected["lm_head.weight"]
    if model.config.model_type.startswith("gemma"):  # the file holds float32(1 + w): all we can recover
        expected = {name: (w + 1) - 1 if name.endswith("norm.weight") else w for name, w in expected.items()}
    ours = dict(read_gguf(path).tensors())
    assert sorted(ours) == sorted(expected)
    for name, weight in ours.items():
        assert weight.dtype == np.float32
        np.testing.assert_array_equal(weight, expected[name], err_msg=name)


def test_config_describes_the_same_model(converted):
    model, path = converted
    checkpoint = read_gguf(path)
    assert ModelConfig.from_hf(checkpoint.hf_config) == ModelConfig.from_hf(model.config.to_dict())
    assert checkpoint.generation_config == {"bos_token_id": 1, "eos_token_id": 2}


@pytest.fixture(scope="module")
def small_gguf(tmp_path_factory) -> Path:
    """A valid llama file with one tensor per layer name, for the error cases to damage."""
    path = tmp_path_factory.mktemp("small") / "small.gguf"
    write_like_llama_cpp(transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY)), "llama", path)
    return path


def _rewrite(source: Path, dest: Path, arch: str | None = None,
             extra: tuple[str, np.ndarray, GGMLQuantizationType] | None = None) -> Path:
    """Copy a GGUF's metadata and tensors into a new file, optionally renaming the arch or adding a tensor."""
    reader = gguf.GGUFReader(source)
    arch = arch or reader.fields["general.architecture"].contents()
    old_arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(dest, arch)
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            sub_type = field.types[-1] if len(field.types) > 1 else None
            writer.add_key_value(key.replace(old_arch, arch, 1), field.contents(), field.types[0], sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data)
    if extra is not None:
        name, data, qtype = extra
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def _error(path: Path) -> str:
    with pytest.raises(ModelLoadError) as caught:
        read_gguf(path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    assert "file not found" in _error(tmp_path / "absent.gguf")


def test_directory(tmp_path):
    assert "not a file" in _error(tmp_path)


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "config.gguf"
    path.write_text('{"model_type": "llama"}')
    assert "not a GGUF file" in _error(path)


@pytest.mark.parametrize("keep", [4, 6, 200, 0.5, -1], ids=lambda k: f"keep-{k}")
def test_truncated_gguf(small_gguf, tmp_path, keep):
    data = small_gguf.read_bytes()
    count = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[:count])
    assert "truncated or corrupt GGUF" in _error(path)


def test_unsupported_architecture(small_gguf, tmp_path):
    message = _error(_rewrite(small_gguf, tmp_path / "bert.gguf", arch="bert"))
    assert "unsupported GGUF architecture 'bert'" in message


def test_unsupported_quantization(small_gguf, tmp_path):
    block = np.random.default_rng().integers(0, 256, size=(1, 84), dtype=np.uint8)  # one Q2_K block
    extra = ("blk.0.ffn_extra.weight", block, GGMLQuantizationType.Q2_K)
    path = _rewrite(small_gguf, tmp_path / "q2k.gguf", extra=extra)
    assert "unsupported GGUF quantization type(s) Q2_K" in _error(path)


def test_unknown_tensor(small_gguf, tmp_path):
    weight = np.random.default_rng().random(8, dtype=np.float32)
    extra = ("blk.1.attn_extra.weight", weight, GGMLQuantizationType.F32)
    path = _rewrite(small_gguf, tmp_path / "extra.gguf", extra=extra)
    assert "blk.1.attn_extra.weight has no Hugging Face equivalent" in _error(path)


def test_rope_freqs_that_are_not_llama3_scaling(small_gguf, tmp_path):
    factors = np.random.default_rng().uniform(1, 8, size=TINY["head_dim"] // 2).astype(np.float32)
    extra = ("rope_freqs.weight", factors, GGMLQuantizationType.F32)
    path = _rewrite(small_gguf, tmp_path / "rope.gguf", extra=extra)
    assert "rope_freqs.weight is not Llama 3 rope scaling" in _error(path)


def test_copied_file_still_loads(small_gguf, tmp_path):
    """The damage, not the rewriting helper, is what the error tests above detect."""
    copy = _rewrite(small_gguf, tmp_path / "copy.gguf")
    assert read_gguf(copy).hf_config == read_gguf(shutil.copy(small_gguf, tmp_path / "plain.gguf")).hf_config

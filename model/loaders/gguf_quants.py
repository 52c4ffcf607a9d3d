"""Dequantize one GGUF tensor into a float32 array in Hugging Face layout.

The block decoding itself is `gguf.quants.dequantize` (llama.cpp's own Python port); this module only
decides which types we accept and fixes the layout, one tensor at a time so that peak host memory
stays near one float32 copy of the model.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType, ReaderTensor
from gguf.quants import dequantize

Q = GGMLQuantizationType

SUPPORTED_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K}
)


def hf_shape(tensor: ReaderTensor) -> tuple[int, ...]:
    """GGUF lists dimensions fastest-varying first ([in, out]); numpy and HF list them slowest first."""
    return tuple(int(dim) for dim in reversed(tensor.shape))


def dequantize_tensor(tensor: ReaderTensor) -> np.ndarray:
    """A fresh, writable float32 array shaped like the HF parameter (the file's mmap is never exposed)."""
    if tensor.tensor_type not in SUPPORTED_TYPES:
        raise ValueError(f"tensor {tensor.name} has unsupported quantization type {tensor.tensor_type.name}")
    values = dequantize(tensor.data, tensor.tensor_type)
    # F32 comes back as a read-only view of the mapped file; everything else is already a fresh array.
    return values.astype(np.float32, copy=not values.flags.writeable).reshape(hf_shape(tensor))

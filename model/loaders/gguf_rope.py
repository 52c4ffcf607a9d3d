"""Llama 3.x RoPE scaling, which GGUF stores as a tensor of per-frequency factors instead of config keys.

llama.cpp's converter writes `rope_freqs.weight` (what each rotary frequency is divided by) and drops the HF
`rope_scaling` dict. We rebuild the dict from Meta's fixed parameters and accept it only if it reproduces
the file's factors, so the rebuilt config computes exactly the rotary frequencies llama.cpp would.
"""

from __future__ import annotations

from typing import Any

import numpy as np

ROPE_FREQS = "rope_freqs.weight"

# Every Llama 3.1/3.2/3.3 release uses these; only `factor` differs (8 or 32), and the factors show it.
_META_PARAMETERS = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def llama3_factors(theta: float, rotary_dim: int, factor: float, low_freq_factor: float,
                   high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """Llama 3 divisor per rotary frequency: 1 for short wavelengths, `factor` for long, smooth between."""
    context = original_max_position_embeddings
    wavelen = 2 * np.pi * theta ** (np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    smooth = (context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    between = 1.0 / ((1 - smooth) / factor + smooth)
    long_wave = np.where(wavelen > context / low_freq_factor, factor, between)
    return np.where(wavelen < context / high_freq_factor, 1.0, long_wave)


def rope_scaling_from_factors(factors: np.ndarray, theta: float, rotary_dim: int) -> dict[str, Any]:
    """HF `rope_scaling` for a file's `rope_freqs` tensor; ValueError if it is not Llama 3 scaling."""
    parameters = {"factor": float(factors.max()), **_META_PARAMETERS}
    expected = llama3_factors(theta, rotary_dim, **parameters)
    if factors.shape != expected.shape or not np.allclose(factors, expected, rtol=1e-5, atol=0):
        raise ValueError(f"{ROPE_FREQS} is not Llama 3 rope scaling with Meta's parameters")
    return {"rope_type": "llama3", **parameters}

"""Every GGUF tensor type we accept dequantizes to the right values in HF layout.

Types gguf 0.19 can quantize are round-tripped from random float data and checked against a per-type
error bound. K-quants (gguf can only decode them) are random valid blocks decoded by an independent
numpy port of llama.cpp's scalar `dequantize_row_q*_K` reference loops, written below from the spec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from gguf.quants import quantize

from tpuserve.model.loaders.gguf_quants import dequantize_tensor

Q = GGMLQuantizationType
SHAPE = (6, 512)  # [out, in]: non-square so a wrong dimension order cannot pass; rows hold 2 K-blocks

# Worst-case error as a fraction of each 32-value block's max |x|, with ~2x slack for the fp16 scale:
#   Q8_0: step d = amax/127, rounding error d/2.          Q4_0: d = amax/8, the opposite-sign extreme is
#   clamped at +7d, so error up to d = amax/8.            Q5_0: same with 16 levels -> amax/16.
#   Q4_1 / Q5_1: step (max-min)/15 or /31 <= 2*amax/levels, rounding error half a step.
BLOCK_TOLERANCE = {Q.Q8_0: 1 / 127, Q.Q4_0: 1 / 7, Q.Q5_0: 1 / 15, Q.Q4_1: 1 / 14, Q.Q5_1: 1 / 30}
# Float types: relative error of one rounding to the format's mantissa (F32 is stored as is).
RELATIVE_TOLERANCE = {Q.F32: 0.0, Q.F16: 2.0**-11, Q.BF16: 2.0**-8}
# float16 values below 2**-14 are subnormal: fixed spacing 2**-24, so rounding is absolute there.
ABSOLUTE_TOLERANCE = {Q.F32: 0.0, Q.F16: 2.0**-25, Q.BF16: 0.0}

K_BLOCK_BYTES = {Q.Q4_K: 144, Q.Q5_K: 176, Q.Q6_K: 210}


@pytest.fixture(scope="module")
def originals() -> dict[GGMLQuantizationType, np.ndarray]:
    rng = np.random.default_rng()
    # Per-row scale spread so blocks differ in magnitude, as real weights do.
    scales = rng.uniform(0.01, 3.0, size=(SHAPE[0], 1))
    return {
        qtype: (rng.standard_normal(SHAPE) * scales).astype(np.float32)
        for qtype in [*BLOCK_TOLERANCE, *RELATIVE_TOLERANCE]
    }


@pytest.fixture(scope="module")
def k_blocks() -> dict[GGMLQuantizationType, np.ndarray]:
    """Random bytes are valid K-quant blocks once the fp16 scales are made finite and moderate."""
    rng = np.random.default_rng()
    n_blocks = SHAPE[0] * SHAPE[1] // 256
    blocks = {}
    for qtype, size in K_BLOCK_BYTES.items():
        raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
        # Q6_K ends with its fp16 d; Q4_K/Q5_K start with fp16 d and dmin.
        for offset in [size - 2] if qtype == Q.Q6_K else [0, 2]:
            scale = rng.uniform(0.001, 0.1, n_blocks).astype(np.float16)
            raw[:, offset : offset + 2] = scale.view(np.uint8).reshape(-1, 2)
        blocks[qtype] = raw
    return blocks


@pytest.fixture(scope="module")
def reader(tmp_path_factory, originals, k_blocks) -> GGUFReader:
    path = Path(tmp_path_factory.mktemp("quants")) / "all_types.gguf"
    writer = GGUFWriter(path, "llama")
    for qtype, values in originals.items():
        writer.add_tensor(qtype.name, quantize(values, qtype), raw_dtype=qtype)
    for qtype, raw in k_blocks.items():
        writer.add_tensor(qtype.name, raw.reshape(SHAPE[0], -1), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFReader(path)


def _tensor(reader: GGUFReader, qtype: GGMLQuantizationType) -> np.ndarray:
    (tensor,) = [t for t in reader.tensors if t.name == qtype.name]
    assert tensor.tensor_type == qtype
    return dequantize_tensor(tensor)


@pytest.mark.parametrize("qtype", list(BLOCK_TOLERANCE), ids=lambda q: q.name)
def test_block_quant_within_error_bound(reader, originals, qtype):
    values = _tensor(reader, qtype)
    original = originals[qtype]
    assert values.shape == SHAPE and values.dtype == np.float32
    block_max = np.abs(original.reshape(-1, 32)).max(axis=1, keepdims=True)
    error = np.abs(values - original).reshape(-1, 32)
    assert np.all(error <= BLOCK_TOLERANCE[qtype] * block_max)
    assert np.any(error > 0), "lossy type came back exact: were the float values returned instead?"


@pytest.mark.parametrize("qtype", list(RELATIVE_TOLERANCE), ids=lambda q: q.name)
def test_float_types_within_rounding(reader, originals, qtype):
    values = _tensor(reader, qtype)
    original = originals[qtype]
    assert values.shape == SHAPE and values.dtype == np.float32
    np.testing.assert_allclose(
        values, original, rtol=RELATIVE_TOLERANCE[qtype], atol=ABSOLUTE_TOLERANCE[qtype]
    )


def test_result_is_a_writable_copy(reader):
    values = _tensor(reader, Q.F32)
    before = float(values[0, 0])
    assert values.flags.writeable
    values[0, 0] += 1.0
    assert float(_tensor(reader, Q.F32)[0, 0]) == before  # the file's tensor is untouched


def _f16(raw: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(raw).view(np.float16).astype(np.float32).reshape(-1)


def _scale_min_k4(j: int, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llama.cpp `get_scale_min_k4`: eight 6-bit (scale, min) pairs packed into 12 bytes."""
    s = scales.astype(np.int32)
    if j < 4:
        return s[:, j] & 63, s[:, j + 4] & 63
    return (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4), (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)


def _reference_q45_k(raw: np.ndarray, high_bits: bool) -> np.ndarray:
    """`dequantize_row_q4_K` / `dequantize_row_q5_K`: d, dmin, scales[12], (qh[32]), qs[128]."""
    d, dmin, scales = _f16(raw[:, 0:2]), _f16(raw[:, 2:4]), raw[:, 4:16]
    qh, qs = (raw[:, 16:48], raw[:, 48:]) if high_bits else (None, raw[:, 16:])
    out = np.zeros((raw.shape[0], 256), np.float32)
    for step, j in enumerate(range(0, 256, 64)):
        low = qs[:, step * 32 : step * 32 + 32].astype(np.int32)
        for half, nibble in enumerate([low & 0xF, low >> 4]):
            sc, m = _scale_min_k4(2 * step + half, scales)
            bit = (qh.astype(np.int32) >> (2 * step + half)) & 1 if high_bits else 0
            q = nibble + 16 * bit
            out[:, j + 32 * half : j + 32 * half + 32] = (d * sc)[:, None] * q - (dmin * m)[:, None]
    return out


def _reference_q6_k(raw: np.ndarray) -> np.ndarray:
    """`dequantize_row_q6_K`: ql[128], qh[64], int8 scales[16], d."""
    ql, qh = raw[:, :128].astype(np.int32), raw[:, 128:192].astype(np.int32)
    scales, d = raw[:, 192:208].view(np.int8).astype(np.float32), _f16(raw[:, 208:210])
    out = np.zeros((raw.shape[0], 256), np.float32)
    for n in range(2):  # two halves of 128 values
        lo, hi, sc = ql[:, 64 * n : 64 * n + 64], qh[:, 32 * n : 32 * n + 32], scales[:, 8 * n : 8 * n + 8]
        for l in range(32):  # noqa: E741 (the reference's loop variable)
            quads = [
                (lo[:, l] & 0xF) | (((hi[:, l] >> 0) & 3) << 4),
                (lo[:, l + 32] & 0xF) | (((hi[:, l] >> 2) & 3) << 4),
                (lo[:, l] >> 4) | (((hi[:, l] >> 4) & 3) << 4),
                (lo[:, l + 32] >> 4) | (((hi[:, l] >> 6) & 3) << 4),
            ]
            for k, q in enumerate(quads):
                out[:, 128 * n + l + 32 * k] = d * sc[:, l // 16 + 2 * k] * (q - 32)
    return out


@pytest.mark.parametrize("qtype", list(K_BLOCK_BYTES), ids=lambda q: q.name)
def test_k_quant_matches_reference_decoder(reader, k_blocks, qtype):
    raw = k_blocks[qtype]
    expected = _reference_q6_k(raw) if qtype == Q.Q6_K else _reference_q45_k(raw, high_bits=qtype == Q.Q5_K)
    values = _tensor(reader, qtype)
    assert values.shape == SHAPE
    assert np.ptp(expected) > 0
    np.testing.assert_allclose(values, expected.reshape(SHAPE), rtol=1e-6, atol=1e-6)

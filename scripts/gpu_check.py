"""One-shot GPU check: native Pallas-Triton parity tests, then decode attention timed against its floor.

Usage (GPU machine, repository root): python scripts/gpu_check.py [--reps 10]; on a bare CUDA image with jax,
first `python -m pip install --no-deps --no-build-isolation -e .` so `tpuserve.kernels` imports.
Step 1 runs tests/kernels/test_gpu.py with `TPUSERVE_KERNEL_INTERPRET=0` (compiled kernels, not the
interpreter). Step 2 times decode (batch 64/256, context 1k/4k, Hq=32, Hkv=8, D=128, bf16, page 16) for the
gpu and xla backends on the same GPU, against KV bytes moved / measured device copy bandwidth. Prints
markdown; exit status is the tests' status.
"""

import argparse
import functools
import os
import subprocess
import sys

import bench_attention_cpu as bench
import jax

from tpuserve.kernels.ragged_paged_attention import ragged_paged_attention

LLAMA3_8B = bench.Shape(num_heads=32, num_kv_heads=8, head_dim=128, page_size=16, dtype="bfloat16")
BACKENDS = ("gpu", "xla")  # timed through the public entry point


def run_parity_tests() -> int:
    env = {**os.environ, "TPUSERVE_KERNEL_INTERPRET": "0"}
    command = [sys.executable, "-m", "pytest", "-q", "tests/kernels/test_gpu.py"]
    return subprocess.run(command, env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    reps = parser.parse_args().reps
    print(f"## gpu parity (native), {jax.devices()[0].device_kind}, jax {jax.__version__}", flush=True)
    status = run_parity_tests()
    bandwidth = bench.copy_bandwidth(num_bytes=2 << 30)
    print(f"\n## decode attention, Hq=32 Hkv=8 D=128 bf16 page 16; copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    print(bench.TABLE_HEADER)
    for batch in (64, 256):
        for context in (1024, 4096):
            q_lens, kv_lens = [1] * batch, [context] * batch
            num_bytes = bench.bytes_moved(LLAMA3_8B, q_lens, kv_lens)
            for backend in BACKENDS:
                attention = functools.partial(
                    ragged_paged_attention, sm_scale=LLAMA3_8B.head_dim**-0.5, backend=backend
                )
                batch_args = bench.make_batch(LLAMA3_8B, q_lens, kv_lens, backend=backend)
                timing = bench.time_call(attention, batch_args, reps)
                row = bench.table_row(f"{backend} b={batch} ctx={context}", timing, num_bytes, bandwidth)
                print(row, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())

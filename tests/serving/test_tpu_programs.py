"""Every step program the engine precompiles also compiles for a real TPU chip and a tensor-parallel TPU mesh.

Llama-3.1-8B's shapes (two of its 32 layers: each layer compiles alike), bf16, an accelerator's engine
shapes; AOT through libtpu's compile-only v5e devices (the generation whose scoped VMEM once rejected the
kernel), on this CPU host.
"""

from __future__ import annotations

import pytest
from jax.experimental import topologies

from tests.kernels.tpu_targets import GENERATIONS, compile_only_device, libtpu_missing
from tests.serving.tpu_programs import TpuPrograms, llama31_8b, tpu_engine_config

pytestmark = pytest.mark.skipif(libtpu_missing() is not None, reason=str(libtpu_missing()))

V5E = next(g for g in GENERATIONS if g.name == "v5e")
ENGINE = tpu_engine_config(max_num_seqs=8, max_num_batched_tokens=32)  # token buckets 16, 32; rows 8


def _compiles_every_program(programs: TpuPrograms) -> None:
    compiled = programs.every_program()
    expected = [f"forward T={t}" for t in ENGINE.token_buckets] + [
        f"sample S={s} {kind}" for s in ENGINE.seq_buckets for kind in ("greedy", "general")]
    assert [program.name for program in compiled] == expected
    assert all(program.flops > 0 and program.bytes_accessed > 0 for program in compiled)


def test_every_step_program_compiles_for_one_v5e_chip() -> None:
    _compiles_every_program(TpuPrograms(llama31_8b(num_layers=2), ENGINE, [compile_only_device(V5E)]))


def test_every_step_program_compiles_for_a_tensor_parallel_v5e_mesh() -> None:
    """tp = 4 over a v5e 2x2 slice: the projections split by the sharding rules, attention per shard."""
    devices = topologies.get_topology_desc(platform="tpu", topology_name=V5E.topology).devices
    programs = TpuPrograms(llama31_8b(num_layers=2), ENGINE, list(devices)[:4])
    assert programs.mesh is not None and programs.mesh.shape["model"] == 4
    _compiles_every_program(programs)

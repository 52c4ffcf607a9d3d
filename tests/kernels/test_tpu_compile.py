"""The TPU kernel compiles for every TPU generation libtpu knows, on this CPU host (project issue #28).

libtpu's compile-only devices run Mosaic's real compile, VMEM limits included, so a tile choice that overflows
a generation's scoped VMEM fails here rather than on the chip. The matrix is diagonal (`diagonal_cells`):
every (model shape, generation) pair compiles one phase and every generation sees every phase, which keeps
the compile time to a few minutes on two cores; scripts/tpu_compile_check.py runs the full matrix.
"""

import jax
import pytest
from jax.experimental.pallas import tpu as pltpu

from tests.kernels.tpu_targets import (
    GENERATIONS,
    PHASES,
    SHAPES,
    Generation,
    HeadShape,
    Phase,
    compile_cell,
    compile_only_device,
    diagonal_cells,
    libtpu_missing,
    tile_plan,
)
from tpuserve.kernels.ragged_paged_attention import tpu
from tpuserve.kernels.ragged_paged_attention.block_sizes import CHIP_VMEM

pytestmark = pytest.mark.skipif(libtpu_missing() is not None, reason=str(libtpu_missing()))
CELLS = diagonal_cells()


def cell_id(cell: tuple[HeadShape, Phase, Generation]) -> str:
    shape, phase, generation = cell
    return f"{shape.name}-{phase.name}-{generation.name}"


def test_diagonal_covers_every_pair_and_phase() -> None:
    pairs = {(shape.name, generation.name) for shape, _, generation in CELLS}
    assert pairs == {(shape.name, generation.name) for shape in SHAPES for generation in GENERATIONS}
    for generation in GENERATIONS:
        phases = {phase.name for _, phase, gen in CELLS if gen == generation}
        assert phases == {phase.name for phase in PHASES}


@pytest.mark.parametrize("generation", GENERATIONS, ids=lambda g: g.name)
def test_compile_only_device_is_the_chip_the_tiles_assume(generation: Generation) -> None:
    """The kernel reads the generation from the default device; the VMEM table agrees with jax's."""
    backend = jax.default_backend()
    device = compile_only_device(generation)
    assert jax.default_backend() == backend  # compile-only devices never become the default backend
    with jax.default_device(device):
        assert tpu.target_chip() == generation.chip
        assert CHIP_VMEM[generation.chip].capacity == pltpu.get_tpu_info().vmem_capacity_bytes


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_attention_compiles(cell: tuple[HeadShape, Phase, Generation]) -> None:
    """The public entry point, tiles and VMEM limit chosen by the kernel, compiles for the generation."""
    plan = tile_plan(*cell)
    assert plan.vmem_estimate <= plan.vmem_limit <= CHIP_VMEM[cell[2].chip].max_limit
    result = compile_cell(*cell)
    assert result.error is None, result.error
    assert result.vmem_limit == plan.vmem_limit  # the kernel planned for this generation, as expected


ISSUE_CELLS = ("llama3-8b-decode-v5e", "gemma2-9b-decode-v5p")  # the failures reported in issue #28


@pytest.mark.parametrize(
    "cell", [cell for cell in CELLS if cell[2].name == "v4" or cell_id(cell) in ISSUE_CELLS], ids=cell_id
)
def test_vmem_estimate_does_not_undercount(cell: tuple[HeadShape, Phase, Generation]) -> None:
    """With the scoped limit set to the estimate itself, Mosaic still finds room: the estimate is an upper
    bound of its allocation (on v4, where the limit is all of VMEM, and the issue's cells; the script's
    `--at-estimate` checks every cell)."""
    plan = tile_plan(*cell)
    result = compile_cell(*cell, block_sizes=plan.sizes, vmem_limit_bytes=plan.vmem_estimate)
    assert result.error is None, result.error

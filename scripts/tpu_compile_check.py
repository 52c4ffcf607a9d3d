"""Ahead-of-time TPU compile matrix of the ragged paged attention kernel, on a CPU host with libtpu installed.

Usage (repository root): python -m scripts.tpu_compile_check [--shapes llama3-8b,...] [--phases decode,...]
[--generations v5e,...] [--at-estimate] [--measure]

Compiles `ragged_paged_attention(..., backend="tpu")` (bf16, page size 16) for every real model head shape ×
serving phase × TPU generation in tests/kernels/tpu_targets.py, on libtpu's compile-only devices, and prints
a markdown table: the tiles and scoped-VMEM estimate the kernel picks, the limit it lowered with, ok or the
error, compile seconds, and XLA's `cost_analysis()` flops and bytes accessed. `--at-estimate` compiles with
the limit set to the estimate itself (it passes only where the estimate does not undercount); `--measure`
also finds the smallest limit each cell compiles under (a few compiles per cell). Exit status 1 if any cell
failed.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

from tests.kernels.tpu_targets import (
    GENERATIONS,
    PHASES,
    SHAPES,
    compile_cell,
    libtpu_missing,
    measure_vmem,
    tile_plan,
)

MiB = 1 << 20


def pick(items: tuple, names: str | None) -> list:
    """The items whose `.name` is in the comma-separated NAMES (all of them when None)."""
    if names is None:
        return list(items)
    wanted = names.split(",")
    unknown = set(wanted) - {item.name for item in items}
    if unknown:
        raise SystemExit(f"unknown names {sorted(unknown)}; choose from {[item.name for item in items]}")
    return [item for item in items if item.name in wanted]


def first_line(error: str) -> str:
    """The part of a compile error worth a table cell: the scoped-VMEM sentence, else its first line."""
    for line in error.splitlines():
        if "Scoped allocation" in line:
            return line[line.index("Scoped allocation") :].split(". It should")[0]
    return error.splitlines()[0][:120]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", help="comma-separated: " + ",".join(s.name for s in SHAPES))
    parser.add_argument("--phases", help="comma-separated: " + ",".join(p.name for p in PHASES))
    parser.add_argument("--generations", help="comma-separated: " + ",".join(g.name for g in GENERATIONS))
    parser.add_argument("--at-estimate", action="store_true", help="compile with vmem_limit_bytes = estimate")
    parser.add_argument("--measure", action="store_true", help="also find the smallest limit that compiles")
    args = parser.parse_args()
    if reason := libtpu_missing():
        print(reason, file=sys.stderr)
        return 2
    if "JAX_PLATFORMS" not in os.environ:
        jax.config.update("jax_platforms", "cpu")  # compile-only devices need no TPU backend on this host

    header = ["shape", "phase", "gen", "tiles (q × kv pages)", "est MiB", "limit MiB", "result", "compile s",
              "flops", "MB accessed"]
    if args.measure:
        header.append("measured MiB")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
    failed = 0
    for shape in pick(SHAPES, args.shapes):
        for phase in pick(PHASES, args.phases):
            for generation in pick(GENERATIONS, args.generations):
                plan = tile_plan(shape, phase, generation)
                overrides = {"vmem_limit_bytes": plan.vmem_estimate} if args.at_estimate else {}
                result = compile_cell(shape, phase, generation, **overrides)
                failed += result.error is not None
                row = [
                    shape.name, phase.name, generation.name,
                    f"{plan.sizes.q_block} × {plan.sizes.kv_pages_per_block}",
                    f"{plan.vmem_estimate / MiB:.2f}", f"{(result.vmem_limit or 0) / MiB:.2f}",
                    "ok" if result.error is None else first_line(result.error),
                    f"{result.seconds:.1f}",
                    f"{result.cost.get('flops', 0):.3g}",
                    f"{result.cost.get('bytes accessed', 0) / 1e6:.1f}",
                ]
                if args.measure:
                    measured = measure_vmem(shape, phase, generation, plan.sizes)
                    row.append(f"{measured / MiB:.2f}" if isinstance(measured, int) else first_line(measured))
                print("| " + " | ".join(row) + " |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

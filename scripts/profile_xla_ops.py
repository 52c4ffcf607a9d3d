"""Which XLA operations a real engine's decode steps spend their time in (XLA:CPU thunk-level profile).

Usage: .venv/bin/python scripts/profile_xla_ops.py [--dtype bfloat16] [--batch 64] [--prompt-len 128]
       [--steps 5] [--top 25]

Fills the engine as `profile_decode_step.py` does, traces `--steps` decode steps with `jax.profiler`, and sums
each XLA operation's event time per step, grouped by program and, within the forward, by the JAX source op
and result shape it came from (HLO metadata of the compiled forward), so the 30 layers' copies of an op add
up in one row and the attention's `q @ K` dots read as such. Times are thread time: operations on the two
threads of a 2-core machine overlap, so the rows add up to more than the step's wall time. Control-flow
operations (`while`, `cond`) span their bodies, and a program's first operations can include waiting for
inputs still being computed by the previous program (dispatch is asynchronous).
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
import time
from pathlib import Path

import jax
from profile_decode_step import decoding_llm

from tpuserve.serving.llm import LLM

FORWARD = "jit__forward_impl"  # the runner's forward program; the LM head and sampler are separate ones
HLO_OP = re.compile(r"%([\w.\-]+) = (\S+) [^\n]*?op_name=\"([^\"]*)\"")


def hlo_ops(llm: LLM, num_tokens: int) -> dict[str, tuple[str, str]]:
    """Operation name -> (result shape, JAX op path) in the forward compiled for `num_tokens` rows."""
    runner = llm.engine.runner
    one_row = num_tokens == 1
    inputs = runner.empty_inputs(num_tokens)
    leaves = runner.weights_for(one_row).leaves
    lowered = runner._forward.lower(one_row, leaves, runner.kv_caches, inputs.buffer, runner.last_tokens,
                                    runner.rope_tables)
    text = lowered.compile().as_text()
    return {m[1]: (m[2], m[3].removeprefix("jit(_forward_impl)/")) for m in HLO_OP.finditer(text)}


def op_times(trace_dir: str) -> collections.Counter[tuple[str, str]]:
    """Nanoseconds per (XLA program, operation name), summed over the trace's XLA threads."""
    [path] = Path(trace_dir).rglob("*.xplane.pb")
    totals: collections.Counter[tuple[str, str]] = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(str(path)).planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if "hlo_op" in stats:
                    totals[stats["hlo_module"], stats["hlo_op"]] += event.duration_ns
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    llm = decoding_llm(args.dtype, "auto", args.batch, args.prompt_len)
    engine = llm.engine
    engine.step()
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for _ in range(args.steps):
            engine.step()
        wall = (time.perf_counter() - start) / args.steps
        jax.profiler.stop_trace()
        totals = op_times(trace_dir)
    ops = hlo_ops(llm, args.batch)
    print(f"{args.dtype} weights, batch {args.batch}: step {wall * 1e3:.1f} ms wall; "
          f"XLA thread time {sum(totals.values()) / args.steps / 1e6:.1f} ms per step")
    by_source: collections.Counter[str] = collections.Counter()
    for (program, name), ns in totals.items():
        shape, source = ops.get(name, ("", name)) if program == FORWARD else ("", name)
        by_source[f"{program:18} {shape:32} {source[-72:]}"] += ns
    for key, ns in by_source.most_common(args.top):
        print(f"{ns / args.steps / 1e6:8.2f} ms  {key}")

if __name__ == "__main__":
    main()

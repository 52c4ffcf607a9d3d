"""Read Prometheus exposition text the way a scraper would, summing each sample name over its labels."""

from __future__ import annotations

import re
from collections import defaultdict

import httpx

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(?P<value>\S+)")


def parse_totals(text: str) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match and not line.startswith("#"):
            totals[match["name"]] += float(match["value"])
    return dict(totals)


def labelled_total(text: str, name: str, label: str) -> float:
    """Sum of one sample name over the label sets that contain `label`, e.g. `finished_reason="abort"`."""
    pattern = re.compile(rf"^{re.escape(name)}\{{(?P<labels>[^}}]*)\}}\s+(?P<value>\S+)", re.MULTILINE)
    return sum(float(m["value"]) for m in pattern.finditer(text) if label in m["labels"])


def scrape(http: httpx.Client) -> str:
    response = http.get("/metrics")
    assert response.status_code == 200
    return response.text

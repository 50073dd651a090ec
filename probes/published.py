"""Published values (ICLR 2023 submission of Zhu et al.; spec/protocols.md §9), looked up per record.

Filled in by the leaderboard work (issue 6); until then no value is known.
"""
from __future__ import annotations

from typing import Any, Mapping


def published_values(*, task: str, model: str, feature: str, protocol: Mapping[str, Any]) -> dict[str, float]:
    """Metric name (unprefixed) -> published value for this configuration, or {} when none applies."""
    return {}

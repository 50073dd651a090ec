"""Shared fixtures. Tests that need ../shared (goldens, manifests, real samples) skip without it."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    if not (SHARED / "golden").is_dir():
        pytest.skip(f"{SHARED} is absent (it sits beside the checkout in CI; a user's clone has none)")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """No test writes into the user's cache: PARTPROBE_HOME points at a fresh temporary folder."""
    home = tmp_path_factory.mktemp("partprobe_home")
    monkeypatch.setenv("PARTPROBE_HOME", str(home))
    for var in ("PARTPROBE_CHECKPOINTS", "PARTPROBE_FEATURES", "PARTPROBE_RESULTS"):
        monkeypatch.delenv(var, raising=False)
    return home

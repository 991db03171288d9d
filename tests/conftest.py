"""Shared fixtures: the real data beside the repository, temporary output folders."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_scene(name: str) -> Path:
    """Path of a scene in ../shared/data; skips the test with a clear reason if it is absent."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data {path} not available (expected ../shared/data beside the repository)")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data {SHARED_DATA} not available")
    return SHARED_DATA

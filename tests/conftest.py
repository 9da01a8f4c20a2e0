"""Shared fixtures: where the shared study data lives, and a scratch state folder."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """Path inside ``../shared/data``; skips the test with a reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared study data not available at {path} (only present in the dev/CI tree)")
    return path


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Keep logs, autosaves and settings of every test out of the user's home."""
    monkeypatch.setenv("SACROPLAN_HOME", str(tmp_path_factory.mktemp("sacroplan-home")))

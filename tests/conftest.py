"""Fixtures shared by unit and engine tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Project


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "proj")

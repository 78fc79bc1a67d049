"""Fixtures for the unit tests (no engine, no network, no server)."""

from __future__ import annotations

import pytest
from helpers import Project

# Builds install from an index (never reached: nothing is built for real) rather
# than a wheelhouse, so the build stage starts no wheelhouse server.
OFFLINE_TOML = '[pip]\nindex_url = "http://127.0.0.1:9/simple"\n'


@pytest.fixture
def offline(project: Project) -> Project:
    """A throwaway project whose builds need no wheelhouse server."""
    (project.root / "imagekit.toml").write_text(OFFLINE_TOML)
    return project


@pytest.fixture(autouse=True)
def _no_secrets_between_tests():
    """Secrets registered by one test (imagekit.peer keeps them per process)
    must not redact another test's text."""
    from imagekit import peer
    peer.forget_secrets()
    yield
    peer.forget_secrets()

"""Fixtures shared by unit and engine tests."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from helpers import Project

# Several tests press Ctrl-C (SIGINT) on an imagekit they started. A shell that runs
# the suite in the background (`make test &` in a script) starts it with SIGINT
# ignored, and an ignored signal stays ignored across exec, so those imagekits would
# never see it. A handler (unlike SIG_IGN) is reset to the default at exec.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path / "proj")

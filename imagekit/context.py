"""The build context: a deterministic in-memory tar holding exactly what the
Dockerfile uses (the Dockerfile and the spec's code folder, as code/)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

IGNORED_NAMES = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache", ".DS_Store"}


def context_tar(dockerfile: str, code_dir: Path | None) -> io.BytesIO:
    """A deterministic tar of exactly what the Dockerfile uses: the Dockerfile
    and the spec's code dir (as code/). Sorted names, zero times and owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_bytes(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))

        add_bytes("Dockerfile", dockerfile.encode())
        if code_dir is not None:
            for path in sorted(_walk(code_dir)):
                rel = path.relative_to(code_dir).as_posix()
                name = f"code/{rel}"
                if path.is_dir():
                    info = tarfile.TarInfo(name)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
                    tar.addfile(info)
                else:
                    mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
                    add_bytes(name, path.read_bytes(), mode)
    buf.seek(0)
    return buf


def _walk(root: Path) -> Iterator[Path]:
    for p in root.iterdir():
        if p.name in IGNORED_NAMES or p.suffix in (".pyc", ".pyo"):
            continue
        yield p
        if p.is_dir() and not p.is_symlink():
            yield from _walk(p)

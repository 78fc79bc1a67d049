"""The build context: a deterministic in-memory tar holding exactly what the
Dockerfile uses (the Dockerfile and the spec's code folder, as code/).

Nothing outside the code folder is ever read: a symbolic link is stored as a
link (as `docker build` does), never followed, and a link whose target lies
outside the folder, or nowhere, is refused with a SpecError that names it."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecError
from .reference import printable

IGNORED_NAMES = {"__pycache__", ".git", ".ipynb_checkpoints", ".pytest_cache", ".DS_Store"}
IGNORED_SUFFIXES = (".pyc", ".pyo")


@dataclass(frozen=True)
class Entry:
    """One thing under the code folder that goes into the context."""

    rel: str          # posix path relative to the code folder
    path: Path
    kind: str         # "dir", "file" or "link"
    executable: bool = False
    target: str = ""  # for a link: its target, relative to the link's folder


def display_path(path: Path) -> str:
    """PATH as messages show it: relative to the working folder where it is under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError, RuntimeError):
        return str(path)


def _shown(path: Path | str) -> str:
    return printable(display_path(Path(path)))


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.endswith(IGNORED_SUFFIXES)


def scan(code_dir: Path) -> list[Entry]:
    """Every entry of CODE_DIR that a build gets, sorted, links not followed.
    Raises SpecError (one line, naming the entry) for a link that leaves the
    folder or leads nowhere, a socket, FIFO or device, a name that is not
    UTF-8, or an entry that cannot be read."""
    root = os.path.realpath(code_dir)
    entries: list[Entry] = []
    try:
        _scan_dir(Path(code_dir), "", entries)
    except OSError as e:
        raise SpecError(f"{_shown(Path(e.filename or code_dir))}: cannot read: {e.strerror}") from None
    kept = {e.rel for e in entries}
    out = []
    for e in entries:
        if e.kind == "link":
            e = _link(e, code_dir, root, kept)
        out.append(e)
    return sorted(out, key=lambda e: e.rel)


def _scan_dir(folder: Path, prefix: str, entries: list[Entry]) -> None:
    with os.scandir(folder) as it:
        items = sorted(it, key=lambda d: d.name)
    for d in items:
        if _ignored(d.name):
            continue
        path = Path(d.path)
        try:
            d.name.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecError(f"{_shown(path)}: the file name is not UTF-8; rename it") from None
        rel = prefix + d.name
        st = d.stat(follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            entries.append(Entry(rel, path, "link"))
        elif stat.S_ISDIR(st.st_mode):
            entries.append(Entry(rel, path, "dir"))
            _scan_dir(path, rel + "/", entries)
        elif stat.S_ISREG(st.st_mode):
            entries.append(Entry(rel, path, "file", executable=bool(st.st_mode & 0o111)))
        else:
            raise SpecError(f"{_shown(path)}: not a regular file, folder or link (a socket, FIFO "
                            "or device); it cannot go into a build")


def _link(e: Entry, code_dir: Path, root: str, kept: set[str]) -> Entry:
    target = os.readlink(e.path)
    resolved = os.path.realpath(e.path)
    where = f"{_shown(e.path)} is a link to {printable(target)}"
    inside = resolved == root or resolved.startswith(root.rstrip("/") + "/")
    if not inside:
        raise SpecError(f"{where}, outside the code folder {_shown(code_dir)}; nothing outside it "
                        "goes into a build (copy the file in instead)")
    if not os.path.lexists(resolved) or os.path.islink(resolved):
        raise SpecError(f"{where}, which does not exist (a broken link or a loop)")
    rel_target = os.path.relpath(resolved, root)
    if rel_target != "." and rel_target not in kept:
        raise SpecError(f"{where}, which is not sent to the build (an ignored name: "
                        f"{', '.join(sorted(IGNORED_NAMES))}, *.pyc)")
    # The link's own folder is a real folder of the code dir (links are never
    # descended), so this relative target resolves the same inside the image.
    here = os.path.realpath(e.path.parent)
    return Entry(e.rel, e.path, "link", target=os.path.relpath(resolved, here))


def _read(path: Path) -> bytes:
    """A regular file's bytes, refusing it if it was swapped for a link since
    the scan."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise SpecError(f"{_shown(path)}: cannot read: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def context_tar(dockerfile: str, code_dir: Path | None) -> io.BytesIO:
    """A deterministic tar of exactly what the Dockerfile uses: the Dockerfile
    and the spec's code dir (as code/, itself included). Sorted names, zero
    times and owners, whatever the checkout's: a rebuild copies the same code
    layer bit for bit. Links stored as links."""
    entries = scan(code_dir) if code_dir is not None else []
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add_bytes(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)

        add_bytes("Dockerfile", dockerfile.encode())
        if code_dir is not None:   # code/ itself: COPY gives its destination this time and mode
            add_dir("code")
        for e in entries:
            name = f"code/{e.rel}"
            if e.kind == "dir":
                add_dir(name)
            elif e.kind == "link":
                info = tarfile.TarInfo(name)
                info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, e.target, 0o777, 0
                tar.addfile(info)
            else:
                add_bytes(name, _read(e.path), 0o755 if e.executable else 0o644)
    buf.seek(0)
    return buf

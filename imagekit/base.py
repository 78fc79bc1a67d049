"""Base images with no registry: `imagekit base bootstrap` makes a Debian
root filesystem with debootstrap from a package mirror and imports it into
the engine as an image; `ensure` does the same before a build that needs it."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from .config import Project, cache_dir
from .engine import EngineAPI
from .errors import BuildError, Interrupted
from .events import BaseResult, Event, Info, Log

CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["bash"]',
]
# Left out of the image: package lists and caches that every layer would carry.
EXCLUDE = ["./var/lib/apt/lists/*", "./var/cache/apt/*", "./var/cache/debconf/*-old",
           "./var/log/*", "./tmp/*", "./dev/*", "./proc/*", "./sys/*"]


def ensure(project: Project, engine: EngineAPI, image: str) -> Iterator[Event]:
    """Make `image` when it is the base that imagekit.toml [base] says how to
    make and the engine does not hold it; any other image is left alone.
    Yields nothing when there is nothing to do. Builds that run at once (threads
    or imagekit processes) make it once: the others wait, then find it."""
    cfg = project.config.base
    if image != cfg.image or "base" not in project.config.model_fields_set:
        return
    if engine.image(image) is not None:
        return
    with _lock(image):
        if engine.image(image) is not None:   # made meanwhile by another build
            return
        yield Info(image, f"{image} is not in the engine; making it as imagekit.toml [base] "
                          f"says (debootstrap {cfg.suite}, a minute or two)")
        yield from bootstrap(project, engine)


@contextlib.contextmanager
def _lock(image: str) -> Iterator[None]:
    """An exclusive lock per base image, for every imagekit on this machine
    (flock: released by the kernel if the holder dies)."""
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in image)
    fd = os.open(d / f"base-{safe}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def bootstrap(project: Project, engine: EngineAPI, force: bool = False) -> Iterator[Event]:
    cfg = project.config.base
    image = cfg.image
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    existing = engine.image(image)
    if existing and not force:
        yield Info(image, f"{image} is already present ({existing.id[:19]}); "
                          "use --force to make it again")
        yield BaseResult(image, image_id=existing.id, made=False, size=existing.size)
        return
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed; run `make engine` "
                         "(or apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise BuildError("debootstrap needs root; run `sudo imagekit base bootstrap`")
    work = project.state_dir / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rootfs-", dir=work) as rootfs:
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(cfg.include)}",
               cfg.suite, rootfs, cfg.mirror]
        yield Info(image, f"debootstrap {cfg.suite} from {cfg.mirror}")
        tail: list[str] = []
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                line = line.rstrip()
                tail = (tail + [line])[-10:]
                if line.startswith(("I: Retrieving", "I: Validating", "I: Extracting",
                                    "I: Unpacking", "I: Configuring")):
                    continue
                yield Log(image, line)
            code = proc.wait()
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise Interrupted("base bootstrap interrupted; nothing was imported") from None
        if code != 0:
            raise BuildError(f"debootstrap of {cfg.suite} failed (exit {code}): "
                             f"{tail[-1] if tail else ''}", details=[f"| {t}" for t in tail])
        yield Info(image, f"importing the root filesystem as {image}")
        # gzip'd: the containerd image store keeps the layer as it is given, so its
        # pushes send it as stored; the classic store unpacks it (same diff ID)
        tar = subprocess.Popen(
            ["tar", "-C", rootfs, "--numeric-owner", *(f"--exclude={e}" for e in EXCLUDE),
             "-I", "gzip -1 -n", "-c", "."], stdout=subprocess.PIPE)
        try:
            engine.import_image(tar.stdout, repository=repo, tag=tag, changes=CHANGES)
        finally:
            tar.stdout.close()
            tar.wait()
    made = engine.image(image)
    if made is None:
        raise BuildError(f"the engine imported the root filesystem but holds no {image}")
    yield BaseResult(image, image_id=made.id, made=True, size=made.size)

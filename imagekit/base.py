"""Base images with no registry: `imagekit base bootstrap` makes a Debian
root filesystem with debootstrap from a package mirror and imports it into
the engine as an image."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

from .config import Project
from .engine import Engine
from .errors import BuildError, Interrupted
from .events import Event, Info, Log, Result

CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["bash"]',
]
# Left out of the image: package lists and caches that every layer would carry.
EXCLUDE = ["./var/lib/apt/lists/*", "./var/cache/apt/*", "./var/cache/debconf/*-old",
           "./var/log/*", "./tmp/*", "./dev/*", "./proc/*", "./sys/*"]


def bootstrap(project: Project, engine: Engine, force: bool = False) -> Iterator[Event]:
    cfg = project.config.base
    image = cfg.image
    repo, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    existing = engine.image(image)
    if existing and not force:
        yield Info(image, f"{image} is already present ({existing['Id'][:19]}); "
                          "use --force to make it again")
        yield Result(image, "base", {"image": image, "image_id": existing["Id"], "made": False})
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
        tar = subprocess.Popen(
            ["tar", "-C", rootfs, "--numeric-owner", *(f"--exclude={e}" for e in EXCLUDE),
             "-c", "."], stdout=subprocess.PIPE)
        try:
            engine.import_image(tar.stdout, repository=repo, tag=tag, changes=CHANGES)
        finally:
            tar.stdout.close()
            tar.wait()
    made = engine.image(image)
    yield Result(image, "base", {"image": image, "image_id": made["Id"], "made": True,
                                 "size": made.get("Size", 0)})

"""Which image a command acts on: a catalog name (images/NAME/image.yaml), any
image reference the engine holds (a pulled or `docker commit`ted training
image), or, with no name at all, what the last `imagekit build` made."""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import records, reference
from .config import Project
from .engine import EngineAPI, ImageInfo
from .errors import ImagekitError, UsageError
from .spec import Plan

LABEL = "io.imagekit."


@dataclass(frozen=True)
class ImageTarget:
    name: str              # the catalog name, or the reference as given
    ref: str               # NAME:TAG for a catalog image, else the reference
    image: ImageInfo
    plan: Plan | None      # None for an image from outside the catalog

    @property
    def image_id(self) -> str:
        """The engine's own ID (it differs between image stores)."""
        return self.image.id

    @property
    def key(self) -> str:
        """What records are keyed on: the identity that survives stores."""
        return self.image.key

    def fact(self, key: str) -> str | None:
        """framework, version, device, python, cuda: from the plan, else the
        image's imagekit labels; None when neither says."""
        if self.plan is not None:
            return {"framework": self.plan.framework, "version": self.plan.version,
                    "device": self.plan.device, "python": self.plan.python,
                    "cuda": self.plan.cuda}.get(key)
        label = {"version": "framework.version"}.get(key, key)
        return self.image.labels.get(LABEL + label) or None


def is_catalog(project: Project, name: str) -> bool:
    return project.catalog.has(name)


def check_reference(name: str, verb: str = "") -> None:
    """A usage error unless `name` is an image reference (catalog names are too)."""
    try:
        reference.parse_reference(name)
    except ValueError as e:
        lead = f"{verb}: " if verb else ""
        raise UsageError(f"{lead}not a catalog image, and {e}") from None


def resolve(project: Project, engine: EngineAPI, name: str, tag: str | None = None, *,
            error: type[ImagekitError] = ImagekitError) -> ImageTarget:
    """A catalog image must be built (else `error`, naming the build to run);
    a reference must be in the engine (else a usage error naming the pull)."""
    if is_catalog(project, name):
        plan = project.catalog.resolve(name)
        ref = plan.spec.image_ref(tag)
        image = engine.image(ref)
        if image is None:
            raise error(f"{name}: {ref} is not built; run `imagekit build {name}` first")
        return ImageTarget(name, ref, image, plan)
    check_reference(name)
    if tag is not None:
        base = name.split("@")[0]
        last = base.rsplit("/", 1)[-1]
        repo = base[:len(base) - len(last)] + last.split(":")[0]
        raise UsageError(f"--tag: {name} is not a catalog image; name the tag in the reference "
                         f"itself ({repo}:{tag})")
    image = engine.image(name)
    if image is None:
        known = ", ".join(project.catalog.names()) or "none"
        raise UsageError(f"{name}: neither a catalog image (known: {known}) nor an image in the "
                         f"engine; run `docker pull {name}` (or `imagekit load FILE`) first")
    return ImageTarget(name, name, image, None)


def last_built(project: Project, verb: str) -> tuple[list[str], str]:
    """The names the last `imagekit build` made, and the first line to show."""
    last = records.last_build(project)
    if last is None:
        raise UsageError(f"nothing built yet in {project.root}: name an image "
                         f"(`imagekit {verb} NAME`) or run `imagekit build NAME` first")
    doing = {"push": "pushing", "save": "saving", "smoke": "smoke-testing"}.get(verb, verb)
    return last.names, (f"{doing} {', '.join(last.names)}, built {_ago(time.time() - last.at)} "
                        f"by `{last.command}`")


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{max(0, int(seconds))} s ago"
    if seconds < 5400:
        return f"{round(seconds / 60)} min ago"
    if seconds < 2 * 86400:
        return f"{round(seconds / 3600)} h ago"
    return f"{round(seconds / 86400)} days ago"

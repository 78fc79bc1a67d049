"""Getting an image onto another engine (the GPU box a smoke test runs on):
pulled there by digest from a registry it was pushed to, else streamed from
this engine's export straight into that engine's load, with no file on disk.
Nothing of this machine is assumed there: no bind mounts, no wheelhouse."""

from __future__ import annotations

from collections.abc import Iterator

from . import records
from .config import Project
from .engine import EngineAPI
from .errors import EngineError, ImagekitError, SmokeError
from .events import Event, Info, Progress, Warn
from .load import load_with_progress
from .targets import ImageTarget


def ship(project: Project, target: ImageTarget, local: EngineAPI, remote: EngineAPI,
         where: str, error: type[ImagekitError] = SmokeError) -> Iterator[Event]:
    """Make `target.ref` name the same image ID on `remote`; a failure raises
    `error` (the verb's own: smoke's, or build's for `build --load`)."""
    name, image_id = target.name, target.image_id
    repo, _, tag = target.ref.rpartition(":") if ":" in target.ref.rsplit("/", 1)[-1] \
        else (target.ref, "", "latest")
    key = target.key
    held = remote.image(target.ref)
    if held is not None and held.key == key:
        yield Info(name, f"{where} already holds {target.ref} ({held.id[:19]})")
        return
    same = remote.image(image_id)
    if same is not None and same.key == key:
        remote.tag(image_id, repo, tag)
        yield Info(name, f"{where} already holds {image_id[:19]}; tagged it {target.ref}")
        return
    rec = records.read(project, key)
    for pinned in rec.pushed if rec else []:
        yield Info(name, f"pulling {pinned} on {where} (pushed there before)")
        try:
            remote.pull(pinned, None)
        except EngineError as e:
            yield Warn(name, f"{where} could not pull {pinned}: {e.message}")
            continue
        got = remote.image(pinned)
        if got is not None and got.key == key:
            remote.tag(got.id, repo, tag)
            yield Info(name, f"shipped {target.ref} to {where} by pulling {pinned}")
            return
        yield Warn(name, f"{pinned} on {where} is {got.id[:19] if got else 'nothing'}, not "
                         f"{image_id[:19]}")
    yield Info(name, f"streaming {target.ref} ({target.image.size / 1e6:.0f} MB) from this "
                     f"engine to {where} (export -> load, nothing on disk)")
    sent = [0]

    def chunks() -> Iterator[bytes]:
        for block in local.save(target.ref):
            sent[0] += len(block)
            yield block

    outcome = yield from load_with_progress(
        remote, chunks(), lambda: Progress(name, f"to {where}", sent[0], target.image.size,
                                           "shipping"))
    err = outcome.get("error")
    if isinstance(err, ImagekitError):
        raise error(f"{name}: shipping {target.ref} to {where} failed: {err.message}")
    if err is not None:
        raise err
    got = remote.image(target.ref)
    if got is None or got.key != key:
        raise error(f"{name}: after shipping, {where} holds "
                         f"{got.id[:19] if got else 'no'} {target.ref}, not {image_id[:19]}")
    yield Info(name, f"shipped {target.ref} to {where} ({sent[0] / 1e6:.0f} MB streamed)")

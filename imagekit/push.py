"""Push stage: the built image (or any image the engine holds) into each
destination registry namespace, all destinations at once, and proof of what
each registry got.

- By default imagekit's own path (push_direct.py, registry.py): the image is
  read once from the engine's export, each layer compressed once, and the same
  blobs uploaded to every destination at once, resuming after a dropped
  connection; `--via-engine` (push_engine.py) makes the engine push instead,
  and is used by itself for what the own path cannot do (the output says so).
- The manifest digest is read back from each registry and checked.
- Transient failures (connection reset/refused, EOF, 5xx) are retried with
  backoff; an authentication failure is never retried (one attempt).
- Credentials: --username/--password-stdin, else IMAGEKIT_REGISTRY_USER and
  IMAGEKIT_REGISTRY_PASSWORD, else the Docker config file (auths, credential
  helpers). Explicit and environment credentials are bound to the registry
  hosts they were given for (destinations.py): the `--to` destinations of the
  same command line, or the host in IMAGEKIT_REGISTRY; never a host a spec
  names. They go only into request headers: never printed, logged, put in a
  child process's arguments or into the image.
- The `REGISTRY/NAMESPACE/REPO:TAG` refs are kept in the engine, as `docker
  tag` + `docker push` would leave them; a failed push removes the ones it made.
- With --sbom the image's bill of materials (sbom.py) is made once and, after
  the push, attached to the image in each registry with the push's own
  registry sessions (attach.py); a refusal there leaves the image pushed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from . import records
from .config import Project
from .destinations import (  # noqa: F401 - the stage's public names
    ENV_PASSWORD,
    ENV_REGISTRY,
    ENV_USER,
    Credentials,
    Destination,
    Done,
    auth_problem,
    credentials,
    destination,
)
from .engine import EngineAPI
from .errors import (
    AuthError,
    EngineUnavailable,
    ImagekitError,
    Interrupted,
    PushError,
    SmokeGateError,
    UsageError,
    attempts,
)
from .events import Event, Info, PushedDestination, PushResult, Warn
from .push_engine import classify, via_engine  # noqa: F401 - classify: the retry rule
from .targets import ImageTarget

RETRIES = 3          # after the first attempt, for transient failures only
BACKOFF = 2.0        # seconds before the first retry; doubles, at most 30 s
FORMATS = ("docker", "oci", "oci-zstd")


def push(project: Project, target: ImageTarget, engine: EngineAPI, *,
         to: list[str] | None = None, tag: str | None = None, repository: str | None = None,
         smoke_gate: bool = True, creds: Credentials | None = None, retries: int = RETRIES,
         backoff: float = BACKOFF, sleep: Callable[[float], None] = time.sleep,
         via: str = "auto", fmt: str = "docker", sbom: bool = False) -> Iterator[Event]:
    """Push the target image to every destination at once. Yields progress and
    per-destination results; the last event is a PushResult with every digest.
    `via`: "own" (imagekit's own path: one export, layers compressed once for
    every registry, resumable), "engine" (docker push), or "auto": the own
    path, except where the engine stores layers compressed (the containerd
    image store), whose own push uploads them as they are, which an export
    cannot beat. With `sbom`, the image's bill of materials is made first
    (sbom.build; SbomError, 13, before anything is sent) and attached to the
    image in each registry after the push (attach.py); a registry that refuses
    it leaves the image pushed and fails the push (PushError, 10) after its
    result. Raises AuthError (11), SmokeGateError (12) or PushError (10)."""
    name, src, image_id = target.name, target.ref, target.image_id
    plan = target.plan
    where_from = f"push.registries in {plan.spec.path.name}" if plan else ""
    if plan is not None:
        m = plan.spec.model
        tag = tag or src.rsplit(":", 1)[1]
        repo_name = repository or m.push.repository or name
        wheres = list(to or m.push.registries)
    else:
        last = src.split("@")[0].rsplit("/", 1)[-1]
        repo_name = repository or last.split(":")[0]
        tag = tag or (last.split(":")[1] if ":" in last else "latest")
        wheres = list(to or [])
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if not wheres:
        raise UsageError(f"{name}: nowhere to push; give --to REGISTRY/NAMESPACE"
                         + (f" or set {where_from}" if where_from else ""))
    dests = list(dict.fromkeys(destination(w, repo_name, tag) for w in wheres))

    passed = records.smoke_passed(project, target.key)
    if smoke_gate and not passed:
        raise SmokeGateError(f"{name}: {src} ({image_id[:19]}) has not passed its smoke test; run "
                             f"`imagekit smoke {name}` first, or push anyway with --no-smoke-gate")
    if not smoke_gate:
        state = "it has passed one" if passed else "it has NOT passed one"
        yield Warn(name, f"smoke gate off (--no-smoke-gate): pushing {image_id[:19]} without "
                         f"checking its smoke test ({state})")

    auths: dict[str, tuple[dict | None, str]] = {}
    for d in dests:
        if d.registry in auths:
            continue
        if creds is not None and creds.for_host(d.registry):
            auths[d.registry] = (creds.auth(d.registry), creds.source)
            continue
        found = engine.registry_auth(d.registry)
        auths[d.registry] = (found, "the Docker config file" if found else "none")
        if creds is not None:
            yield Warn(name, f"{creds.source} not sent to {d.registry}: they were given for "
                             f"{', '.join(sorted(creds.hosts or [])) or 'no named registry'} "
                             f"(name the host with --to or {ENV_REGISTRY})")
    for host, (auth, source) in auths.items():      # malformed: refused here, never retried
        problem = auth_problem(auth)
        if problem:
            raise AuthError(f"{name}: credentials for {host} from {source} not sent: {problem}")
    # every credential is registered with peer.keep_secret (auth_problem, Credentials):
    # whatever a registry or the engine echoes back is redacted wherever it is shown

    sessions, doc = None, b""
    if sbom:
        from . import attach  # only when asked
        from . import sbom as sbom_stage
        yield Info(name, f"listing what {src} ({image_id[:19]}) holds for its bill of materials "
                         "(--sbom), in a container with no network")
        doc = sbom_stage.text(sbom_stage.build(project, target, engine)[0]).encode()
        sessions = attach.sessions(auths)
    yield Info(name, f"pushing {src} ({image_id[:19]}) to "
                     f"{', '.join(d.ref for d in dests)}")
    stored = via != "own" and fmt == "docker" and engine.stored_compressed(target.ref)
    if via == "auto" and stored:
        via = "engine"
        yield Info(name, "the engine keeps this image's layers compressed (containerd image "
                         "store): it pushes them as they are, with nothing to compress")
    elif via == "auto" and fmt == "docker" and engine.facts().layers_stored_compressed:
        yield Info(name, "the engine holds this image's layers uncompressed (loaded from a "
                         "classic store's save?): imagekit compresses them on its own path")
    try:
        if via == "engine":
            done = yield from _through_engine(engine, name, image_id, dests, auths, retries,
                                              backoff, sleep)
        else:
            from .push_direct import direct  # the own path's modules, only when it runs
            done, fallback, why = yield from direct(engine, name, image_id,
                                                    list(target.image.diff_ids), dests, auths,
                                                    fmt=fmt, retries=retries, backoff=backoff,
                                                    sleep=sleep, registries=sessions)
            for x in done:                 # the refs a push leaves, as docker push does
                if x.error is None:
                    with contextlib.suppress(ImagekitError):
                        engine.tag(image_id, x.dest.repo, x.dest.tag)
            if fallback:
                yield Info(name, f"pushing {', '.join(d.ref for d in fallback)} through the "
                                 f"engine instead: {why}")
                done += yield from _through_engine(engine, name, image_id, fallback, auths,
                                                   retries, backoff, sleep)
    except KeyboardInterrupt:
        raise Interrupted(f"{name}: push interrupted; a registry shows no tag until its manifest "
                          "is written") from None
    failed = [x for x in done if x.error is not None]
    lost = next((x.error for x in failed if isinstance(x.error, EngineUnavailable)), None)
    if lost is not None:
        raise lost
    if failed:
        order = {d: i for i, d in enumerate(dests)}
        done.sort(key=lambda x: order[x.dest])
        first = next((x for x in failed if isinstance(x.error, AuthError)), failed[0])
        details = [f"{x.dest.ref}: pushed, digest {x.digest}" if x.error is None
                   else f"{x.dest.ref}: {x.error.message}" for x in done] if len(dests) > 1 else []
        err = first.error
        message = err.message if len(dests) == 1 else \
            f"{len(failed)} of {len(dests)} destinations failed; {err.message}"
        raise type(err)(f"{name}: {message}", details=details)

    by_dest = {x.dest: x for x in done}
    records.add_pushed(project, target.key, [f"{d.repo}@{by_dest[d].digest}" for d in dests])
    attached, unattached = {}, []
    for d in dests if sessions is not None else []:
        try:
            attached[d] = yield from _attach(sessions[d.registry], d, by_dest[d].digest, doc, name,
                                             retries, backoff, sleep)
        except PushError as e:
            unattached.append(f"{d.ref}: pushed ({by_dest[d].digest}), but its bill of materials "
                              f"was not attached: {e.message}")
    own = next((x for x in done if x.via == "direct"), None)
    if own is not None:
        compressed, as_stored = own.bytes_compressed, own.layers_as_stored
    elif stored:                       # the engine sent its stored (compressed) layers
        compressed, as_stored = 0, len(set(target.image.diff_ids)) or None
    else:                              # the engine compressed what it sent: not known here
        compressed = as_stored = None
    yield PushResult(name, image_id=image_id, source=src,
                     smoke_gate="on" if smoke_gate else "off", smoke_passed=passed,
                     destinations=[PushedDestination(
                         d.ref, d.repo, d.tag, by_dest[d].digest, f"{d.repo}@{by_dest[d].digest}",
                         by_dest[d].attempts, by_dest[d].seconds, by_dest[d].via,
                         by_dest[d].bytes_sent, attached.get(d)) for d in dests],
                     bytes_compressed=compressed, layers_as_stored=as_stored)
    if unattached:       # the image stays pushed (and recorded); the push did not do all it was asked
        many = f"{len(unattached)} of {len(dests)} bills of materials not attached; " \
            if len(dests) > 1 else ""
        raise PushError(f"{name}: {many}{unattached[0]}",
                        details=unattached if len(dests) > 1 else [])


def _attach(reg, d: Destination, digest: str, doc: bytes, name: str, retries: int,
            backoff: float, sleep: Callable[[float], None]):
    """Attach the SBOM to one pushed destination, a transient failure retried
    with backoff (every step is idempotent); returns its AttachedSbom."""
    from .attach import attach
    from .registry import TransientPushError
    attempt = 0
    while True:
        try:
            return attach(reg, d.repo.removeprefix(d.registry + "/"), d.tag, digest, doc,
                          where=d.repo, title=f"{d.repository}.sbom.json")
        except TransientPushError as e:
            attempt += 1
            if attempt > retries:
                raise PushError(f"failed after {attempts(attempt)}: {e.message}") from None
            wait = min(backoff * 2 ** (attempt - 1), 30.0)
            yield Warn(name, f"{d.ref}: attaching its bill of materials failed ({e.message}); "
                             f"retrying in {wait:g}s")
            sleep(wait)


def _untag(engine: EngineAPI, dests: list[Destination]) -> bool:
    """Remove these refs; False when the engine could not be asked."""
    ok = True
    for d in dests:
        try:
            engine.remove_image(d.ref)
        except ImagekitError:
            ok = False
    return ok


def _through_engine(engine: EngineAPI, name: str, image_id: str, dests: list[Destination],
                    auths, retries, backoff, sleep):
    """The engine pushes what is tagged in it: tag, push, and untag again what
    failed. The tags are written down first, so that if this process or the
    engine dies in between, the next connect to that engine removes them."""
    made = [d for d in dests if engine.image(d.ref) is None]
    token = engine.hold_tags(image_id, [d.ref for d in made])
    done: list[Done] = []
    try:
        for d in dests:
            engine.tag(image_id, d.repo, d.tag)
        done = yield from via_engine(engine, name, dests, auths, retries, backoff, sleep)
    except BaseException:
        if _untag(engine, made):   # else the engine is gone: its next connect removes them
            engine.release_tags(token)
        raise
    if not any(isinstance(x.error, EngineUnavailable) for x in done) and \
            _untag(engine, [x.dest for x in done if x.error is not None and x.dest in made]):
        engine.release_tags(token)
    return done

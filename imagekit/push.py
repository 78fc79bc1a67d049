"""Push stage: retag the built image into each destination registry namespace,
push all destinations at once, and prove what the registry got.

- The whole push stream is read and any `error`/`errorDetail` item fails the
  push (docker-py does not raise when a registry refuses: docker/docker-py#3161).
- Transient failures (connection reset/refused, EOF, 5xx) are retried with
  backoff; an authentication failure is never retried (one attempt).
- The manifest digest comes from the stream's final `aux.Digest` and is checked
  against what the registry itself answers (the engine's distribution inspect).
- Credentials: --username/--password-stdin, else IMAGEKIT_REGISTRY_USER and
  IMAGEKIT_REGISTRY_PASSWORD, else the Docker config file (auths, credential
  helpers). Explicit and environment credentials are bound to the registry
  hosts they were given for: the `--to` destinations of the same command line,
  or the host in IMAGEKIT_REGISTRY; never a host a spec names. They go to the
  engine in its X-Registry-Auth header only: never printed, logged, put in a
  child process's arguments or into the image.
- The `REGISTRY/NAMESPACE/REPO:TAG` refs made for the push are kept, as
  `docker tag` + `docker push` would leave them (`docker rmi` removes them).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from . import records
from .config import Project
from .engine import EngineAPI, LayerProgress, PushDone
from .errors import (
    AuthError,
    EngineUnavailable,
    ImagekitError,
    Interrupted,
    PushError,
    SmokeGateError,
    UsageError,
)
from .events import Event, Info, Progress, PushedDestination, PushResult, Warn
from .targets import ImageTarget

ENV_USER = "IMAGEKIT_REGISTRY_USER"
ENV_PASSWORD = "IMAGEKIT_REGISTRY_PASSWORD"
ENV_REGISTRY = "IMAGEKIT_REGISTRY"
RETRIES = 3          # after the first attempt, for transient failures only
BACKOFF = 2.0        # seconds before the first retry; doubles, at most BACKOFF_MAX
BACKOFF_MAX = 30.0

# Docker's reference grammar: a path component, and a tag.
COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
HOST_RE = re.compile(r"^(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+|[A-Za-z0-9.-]+:[0-9]+|"
                     r"\[[0-9a-fA-F:]+\](?::[0-9]+)?)$")

AUTH_RE = re.compile(r"unauthori[sz]ed|authentication required|\b401\b|no basic auth credentials|"
                     r"incorrect username or password|requested access to the resource is denied",
                     re.IGNORECASE)
TRANSIENT_RE = re.compile(
    r"connection reset|connection refused|broken pipe|\bEOF\b|i/o timeout|TLS handshake timeout|"
    r"timeout exceeded|unexpected HTTP status: 5\d\d|status(?: code)?:? 5\d\d|\b5\d\d (?:Internal|Bad|"
    r"Service|Gateway)|Internal Server Error|Bad Gateway|Service Unavailable|Gateway Time-?out|"
    r"too many requests|\b429\b|server closed|connection aborted",
    re.IGNORECASE)


def classify(message: str) -> str:
    """'auth' (never retried), 'transient' (retried with backoff) or 'fatal'."""
    if AUTH_RE.search(message):
        return "auth"
    if TRANSIENT_RE.search(message):
        return "transient"
    return "fatal"


@dataclass(frozen=True)
class Destination:
    registry: str
    namespace: str
    repository: str
    tag: str

    @property
    def where(self) -> str:
        """What was asked for: REGISTRY/NAMESPACE."""
        return f"{self.registry}/{self.namespace}" if self.namespace else self.registry

    @property
    def repo(self) -> str:
        return f"{self.where}/{self.repository}"

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"


@dataclass(frozen=True)
class Credentials:
    """A username and password; the password never shows in a repr."""

    username: str
    password: str = field(repr=False)
    source: str = ""
    hosts: frozenset[str] | None = None   # the registries they were given for (None: unbound)

    def for_host(self, registry: str) -> bool:
        return self.hosts is not None and registry in self.hosts

    def auth(self, registry: str) -> dict:
        return {"username": self.username, "password": self.password, "serveraddress": registry}


def destination(text: str, repository: str, tag: str) -> Destination:
    """Parse one --to / push.registries entry, REGISTRY[/NAMESPACE]."""
    raw = text.strip().rstrip("/")
    if "://" in raw:
        raise UsageError(f"--to {text}: give REGISTRY/NAMESPACE without a scheme "
                        "(e.g. registry.example.com/team)")
    host, _, namespace = raw.partition("/")
    if not HOST_RE.match(host):
        raise UsageError(f"--to {text}: {host!r} is not a registry host; start with one, e.g. "
                        "registry.example.com/team, localhost:5000/team or docker.io/team")
    for part in [p for p in namespace.split("/")] if namespace else []:
        if not COMPONENT_RE.match(part):
            raise UsageError(f"--to {text}: namespace part {part!r} is not a valid repository "
                            "path component (lowercase letters, digits, '.', '_', '-')")
    if not COMPONENT_RE.match(repository):
        raise UsageError(f"repository {repository!r} is not a valid repository name")
    if not TAG_RE.match(tag):
        raise UsageError(f"tag {tag!r} is not a valid Docker tag")
    return Destination(host, namespace, repository, tag)


def credentials(username: str | None = None, password: str | None = None,
                environ: dict | None = None, to: list[str] | None = None) -> Credentials | None:
    """Explicit credentials first, then the environment; None leaves it to the
    Docker config file (resolved per registry by the engine module). The
    credentials are bound to the hosts of `to` (the command line's --to), or to
    IMAGEKIT_REGISTRY's host for the environment's."""
    env = os.environ if environ is None else environ
    cli_hosts = frozenset(_host(w) for w in to or [])
    if username is not None or password is not None:
        if not username:
            raise UsageError("--password-stdin needs --username")
        if not password:
            raise UsageError("the password read from stdin (--password-stdin) is empty")
        if not cli_hosts:
            raise UsageError("--username needs --to: credentials given on the command line go "
                             "only to the registries named there")
        return Credentials(username, password, "--username/--password-stdin", cli_hosts)
    user, pw = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if user or pw:
        if not (user and pw):
            missing = ENV_PASSWORD if user else ENV_USER
            raise UsageError(f"{ENV_USER} and {ENV_PASSWORD} go together; {missing} is not set")
        named = env.get(ENV_REGISTRY, "").strip()
        if named and not HOST_RE.match(named):
            raise UsageError(f"{ENV_REGISTRY}={named!r} is not a registry host (e.g. "
                             "registry.example.com or localhost:5000)")
        hosts = frozenset([named]) if named else cli_hosts
        return Credentials(user, pw, f"{ENV_USER}/{ENV_PASSWORD}", hosts or None)
    return None


def _host(where: str) -> str:
    return where.strip().partition("/")[0]


class _Failed(Exception):
    """One push attempt failed; message is the registry's or engine's words."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass
class _Done:
    dest: Destination
    digest: str = ""
    attempts: int = 0
    seconds: float = 0.0
    error: ImagekitError | None = None


def _redact(text: str, secrets: list[str]) -> str:
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def push(project: Project, target: ImageTarget, engine: EngineAPI, *,
         to: list[str] | None = None, tag: str | None = None, repository: str | None = None,
         smoke_gate: bool = True, creds: Credentials | None = None, retries: int = RETRIES,
         backoff: float = BACKOFF, sleep: Callable[[float], None] = time.sleep) -> Iterator[Event]:
    """Push the target image to every destination at once. Yields progress and
    per-destination results; the last event is a PushResult with every digest.
    Raises AuthError (11), SmokeGateError (12) or PushError (10)."""
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
    if not wheres:
        raise UsageError(f"{name}: nowhere to push; give --to REGISTRY/NAMESPACE"
                         + (f" or set {where_from}" if where_from else ""))
    dests = list(dict.fromkeys(destination(w, repo_name, tag) for w in wheres))

    passed = records.smoke_passed(project, image_id)
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
    secrets = [creds.password] if creds else []
    secrets += [str(a.get(k, "")) for a, _ in auths.values() if a
                for k in ("password", "Password", "IdentityToken", "identitytoken", "auth")]

    made = [d for d in dests if engine.image(d.ref) is None]   # removed again on failure
    for d in dests:
        engine.tag(image_id, d.repo, d.tag)
    yield Info(name, f"pushing {src} ({image_id[:19]}) to "
                     f"{', '.join(d.ref for d in dests)}")

    events: queue.Queue = queue.Queue()
    for d in dests:
        auth, source = auths[d.registry]
        threading.Thread(target=_worker, daemon=True,
                         args=(engine, name, d, auth, source, retries, backoff, sleep,
                               events.put, secrets)).start()
    done: list[_Done] = []
    try:
        while len(done) < len(dests):
            try:
                item = events.get(timeout=0.2)
            except queue.Empty:
                continue
            if isinstance(item, _Done):
                done.append(item)
                if item.error is None and len(dests) > 1:
                    yield Info(name, f"pushed {item.dest.ref} digest {item.digest} (checked with "
                                     f"the registry; {item.attempts} attempt"
                                     f"{'s' if item.attempts > 1 else ''})")
            else:
                yield item
    except KeyboardInterrupt:
        raise Interrupted(f"{name}: push interrupted; the engine stops the upload, and a registry "
                          "shows no tag until its manifest is written") from None

    failed = [x for x in done if x.error is not None]
    for x in failed:
        if x.dest in made:
            with contextlib.suppress(ImagekitError):
                engine.remove_image(x.dest.ref)
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
    records.add_pushed(project, image_id, [f"{d.repo}@{by_dest[d].digest}" for d in dests])
    yield PushResult(name, image_id=image_id, source=src,
                     smoke_gate="on" if smoke_gate else "off", smoke_passed=passed,
                     destinations=[PushedDestination(
                         d.ref, d.repo, d.tag, by_dest[d].digest, f"{d.repo}@{by_dest[d].digest}",
                         by_dest[d].attempts, by_dest[d].seconds) for d in dests])


def _worker(engine: EngineAPI, name: str, d: Destination, auth: dict | None, source: str,
            retries: int, backoff: float, sleep: Callable[[float], None],
            put: Callable[[object], None], secrets: list[str]) -> None:
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            digest = _attempt(engine, name, d, auth, put)
            put(_Done(d, digest, attempt, round(time.monotonic() - started, 2)))
            return
        except _Failed as f:
            reason = _redact(_one_line(f.message), secrets)
        except EngineUnavailable as e:
            put(_Done(d, "", attempt, round(time.monotonic() - started, 2), e))
            return
        except ImagekitError as e:
            reason = _redact(_one_line(e.message), secrets)
        except Exception as e:  # noqa: BLE001 - reported as this destination's failure
            reason = _redact(_one_line(f"{type(e).__name__}: {e}"), secrets)
        kind = classify(reason)
        if kind == "auth":
            hint = f"credentials from {source}" if auth else \
                f"no credentials found for {d.registry} (docker login {d.registry}, " \
                f"{ENV_USER}/{ENV_PASSWORD}, or --username with --password-stdin)"
            err: ImagekitError = AuthError(f"{d.ref}: authentication failed ({hint}): {reason}; "
                                           "not retried")
        elif kind == "transient" and attempt <= retries:
            wait = min(backoff * 2 ** (attempt - 1), BACKOFF_MAX)
            put(Warn(name, f"{d.ref}: attempt {attempt} of {retries + 1} failed ({reason}); "
                           f"retrying in {wait:g}s"))
            sleep(wait)
            continue
        elif kind == "transient":
            err = PushError(f"{d.ref}: push failed after {attempt} attempts: {reason}")
        else:
            err = PushError(f"{d.ref}: push failed: {reason}")
        put(_Done(d, "", attempt, round(time.monotonic() - started, 2), err))
        return


def _attempt(engine: EngineAPI, name: str, d: Destination, auth: dict | None,
             put: Callable[[object], None]) -> str:
    """One push of one destination: the whole stream, then the registry's digest."""
    digest = ""
    for item in engine.push(d.repo, d.tag, auth):
        if isinstance(item, LayerProgress):
            put(Progress(name, f"{d.where} {item.layer}", item.current, item.total, item.status))
        elif isinstance(item, PushDone):
            digest = item.digest
    held = engine.distribution_digest(d.ref, auth)
    if held != digest:
        raise _Failed(f"the registry holds {held or 'no manifest'} for {d.ref}, but the push "
                      f"reported {digest}")
    return digest

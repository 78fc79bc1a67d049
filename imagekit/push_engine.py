"""Pushing through the engine (`docker push`): one thread per destination, the
whole push stream read (the engine reports a refusal inside it, under a 200),
then the manifest digest asked back from the registry through the engine.
Transient failures are retried with backoff; an authentication failure never."""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable

from .destinations import ENV_PASSWORD, ENV_USER, Destination, Done
from .engine import EngineAPI, LayerProgress, PushDone
from .errors import AuthError, EngineUnavailable, ImagekitError, PushError, attempts
from .events import Info, Progress, Warn
from .peer import redact

BACKOFF_MAX = 30.0

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


class _Failed(Exception):
    """One push attempt failed; message is the registry's or engine's words."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def via_engine(engine: EngineAPI, name: str, dests: list[Destination],
               auths: dict[str, tuple[dict | None, str]], retries: int, backoff: float,
               sleep: Callable[[float], None]):
    """Push every destination at once through the engine; yields progress and
    returns a Done per destination."""
    events: queue.Queue = queue.Queue()
    for d in dests:
        auth, source = auths[d.registry]
        threading.Thread(target=_worker, daemon=True,
                         args=(engine, name, d, auth, source, retries, backoff, sleep,
                               events.put)).start()
    done: list[Done] = []
    while len(done) < len(dests):
        try:
            item = events.get(timeout=0.2)
        except queue.Empty:
            continue
        if isinstance(item, Done):
            done.append(item)
            if item.error is None and len(dests) > 1:
                yield Info(name, f"pushed {item.dest.ref} digest {item.digest} (checked with "
                                 f"the registry; {item.attempts} attempt"
                                 f"{'s' if item.attempts > 1 else ''})")
        else:
            yield item
    return done


def _worker(engine: EngineAPI, name: str, d: Destination, auth: dict | None, source: str,
            retries: int, backoff: float, sleep: Callable[[float], None],
            put: Callable[[object], None]) -> None:
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            digest = _attempt(engine, name, d, auth, put)
            put(Done(d, digest, attempt, round(time.monotonic() - started, 2)))
            return
        except _Failed as f:
            reason = redact(_one_line(f.message))
        except EngineUnavailable as e:
            put(Done(d, "", attempt, round(time.monotonic() - started, 2), e))
            return
        except ImagekitError as e:
            reason = redact(_one_line(e.message))
        except Exception as e:  # noqa: BLE001 - reported as this destination's failure
            reason = redact(_one_line(f"{type(e).__name__}: {e}"))
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
            err = PushError(f"{d.ref}: push failed after {attempts(attempt)}: {reason}")
        else:
            err = PushError(f"{d.ref}: push failed: {reason}")
        put(Done(d, "", attempt, round(time.monotonic() - started, 2), err))
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
    if not digest and held:     # the containerd store of Engine < 27 reports none
        return held
    if held != digest:
        raise _Failed(f"the registry holds {held or 'no manifest'} for {d.ref}, but the push "
                      f"reported {digest}")
    return digest

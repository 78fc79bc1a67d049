"""imagekit's own push path, as the push stage uses it: the image read once
from the engine's export, each layer compressed once, the same blobs uploaded
to every destination at once (registry.py), mapped to imagekit's events. A
destination that failed for now (TransientPushError) is pushed again with
backoff from the blobs the first read left in a spool folder (the export is
read once per push, however many tries), and a later try sends only what the
registry does not hold yet; no try starts RETRY_WINDOW seconds after the
first failure.
What this path cannot do (DirectPushUnsupported) is handed back, so that the
stage pushes it through the engine instead."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from . import registry
from .destinations import ENV_PASSWORD, ENV_USER, Destination, Done
from .engine import EngineAPI
from .errors import AuthError, DirectPushUnsupported, ImagekitError, PushError, attempts
from .events import Info, Progress, Warn
from .layers import Compressing

BACKOFF_MAX = 30.0
HOW = {"uploaded": "Pushed", "exists": "Layer already exists", "mounted": "Mounted"}


def direct(engine: EngineAPI, name: str, image_id: str, diff_ids: list[str],
           dests: list[Destination],
           auths: dict[str, tuple[dict | None, str]], *, fmt: str, retries: int, backoff: float,
           sleep: Callable[[float], None], registries: dict[str, registry.Registry] | None = None):
    """Yields progress; returns (Done per destination pushed or failed,
    destinations to push through the engine, why). REGISTRIES: the sessions
    to push with (per host), for a caller that goes on using them."""
    targets = {d: registry.Target(d.registry, d.repo.removeprefix(d.registry + "/"), d.tag)
               for d in dests}
    by_ref = {t.ref: d for d, t in targets.items()}
    creds = {host: registry.Auth.from_docker(auth) for host, (auth, _) in auths.items()}
    done: dict[Destination, Done] = {}
    fallback: list[Destination] = []
    why = ""
    pending = list(dests)
    attempt = 0
    started = time.monotonic()
    sent: dict[Destination, int] = {}          # bytes of earlier, failed attempts
    checked: set[Destination] = set()          # failed the registry check (retried there)
    export_read: registry.ExportRead | None = None
    spool = Path(tempfile.mkdtemp(prefix="imagekit-push-"))
    try:
        image = None            # what the first try read: later tries push it again from the spool
        first_failure: float | None = None
        while pending:
            attempt += 1
            failed: dict[Destination, ImagekitError] = {}
            src = image if image is not None else engine.save(image_id)
            try:
                for ev in registry.push(src, [targets[d] for d in pending], creds,
                                        format=fmt, expect_diff_ids=diff_ids, retries=min(retries, 4),
                                        backoff=backoff / 2, sleep=sleep, spool=spool,
                                        registries=registries):
                    if isinstance(ev, Compressing):
                        yield Progress(name, f"layer {ev.source[:19]}", ev.done, ev.total,
                                       "reading" if ev.stored else "compressing")
                    elif isinstance(ev, registry.BlobProgress):
                        d = by_ref[ev.target]
                        yield Progress(name, f"{d.where} {ev.digest[7:19]}", ev.sent, ev.total,
                                       "Pushing")
                    elif isinstance(ev, registry.BlobDone):
                        d = by_ref[ev.target]
                        how = HOW.get(ev.how, ev.how)
                        yield Progress(name, f"{d.where} {ev.digest[7:19]}", ev.size, ev.size,
                                       f"{how} from {ev.source}" if ev.source else how)
                    elif isinstance(ev, registry.Resumed):
                        d = by_ref[ev.target]
                        yield Warn(name, f"{d.ref}: blob {ev.digest[7:19]} "
                                         + ("started again (the registry lost the upload)"
                                            if ev.restarted else f"resumed at {ev.offset} bytes"))
                    elif isinstance(ev, registry.Retrying):
                        yield Warn(name, f"{ev.target}: {ev.what} failed ({ev.reason}); retrying "
                                         f"in {ev.wait:g}s (try {ev.attempt})")
                    elif isinstance(ev, registry.ExportRead):
                        export_read = ev
                        how = f"{ev.raw_size / 1e6:.0f} MB compressed to " if ev.raw_size else ""
                        stored = f", {ev.stored} as the engine stored them" if ev.stored else ""
                        yield Info(name, f"read the image once: {ev.layers} layers{stored}, "
                                         f"{how}{ev.compressed_size / 1e6:.0f} MB to send, in "
                                         f"{ev.seconds:.1f}s")
                    elif isinstance(ev, registry.TargetPushed):
                        d = by_ref[ev.target]
                        done[d] = Done(d, ev.digest, attempt, round(time.monotonic() - started, 2),
                                       bytes_sent=sent.get(d, 0) + ev.bytes_sent, via="direct",
                                       bytes_compressed=export_read.raw_size if export_read else None,
                                       layers_as_stored=export_read.stored if export_read else None)
                        if len(dests) > 1:
                            yield Info(name, f"pushed {d.ref} digest {ev.digest} (checked with the "
                                             "registry)")
                    elif isinstance(ev, registry.TargetFailed):
                        d = by_ref[ev.target]
                        failed[d] = ev.error
                        if ev.checked:      # retried by the check itself: not once more here
                            checked.add(d)
                        sent[d] = sent.get(d, 0) + ev.bytes_sent
                    elif isinstance(ev, registry.PushSummary) and ev.image is not None:
                        image = ev.image
            except DirectPushUnsupported as e:
                return list(done.values()), [d for d in pending if d not in done], e.message
            except PushError as e:
                failed.update({d: e for d in pending if d not in done and d not in failed})
            pending = []
            if failed and first_failure is None:
                first_failure = time.monotonic()
            in_window = first_failure is None or \
                time.monotonic() - first_failure < registry.RETRY_WINDOW
            for d, err in failed.items():
                if isinstance(err, DirectPushUnsupported):
                    fallback.append(d)
                    why = err.message
                elif isinstance(err, registry.TransientPushError) and in_window and \
                        d not in checked and \
                        attempt <= (min(retries, registry.SLOW_RETRIES) if err.slow else retries):
                    pending.append(d)      # unanswered: once more at most (each costs a limit)
                else:
                    if isinstance(err, registry.TransientPushError) and d in checked and \
                            attempt == 1:       # the check's own tries were the only ones
                        err = PushError(f"{d.ref}: push failed: {err.message}")
                    elif isinstance(err, registry.TransientPushError):
                        err = PushError(f"{d.ref}: push failed after {attempts(attempt)}: {err.message}")
                    elif isinstance(err, AuthError):
                        auth, source = auths[d.registry]
                        hint = f"credentials from {source}" if auth else \
                            f"no credentials found for {d.registry} (docker login {d.registry}, " \
                            f"{ENV_USER}/{ENV_PASSWORD}, or --username with --password-stdin)"
                        err = AuthError(f"{d.ref}: authentication failed ({hint}): {err.message}; "
                                        "not retried")
                    elif not err.message.startswith(d.ref):
                        err = type(err)(f"{d.ref}: {err.message}")
                    done[d] = Done(d, "", attempt, round(time.monotonic() - started, 2), err,
                                   bytes_sent=sent.get(d, 0), via="direct")
            if pending:
                wait = min(backoff * 2 ** (attempt - 1), BACKOFF_MAX)
                yield Warn(name, f"{', '.join(d.ref for d in pending)}: attempt {attempt} of "
                                 f"{retries + 1} failed ({failed[pending[0]].message}); retrying in "
                                 f"{wait:g}s")
                sleep(wait)
        return list(done.values()), fallback, why
    finally:
        shutil.rmtree(spool, ignore_errors=True)

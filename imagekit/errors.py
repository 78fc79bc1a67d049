"""The one error root. Every failure a user can cause or meet is an ImagekitError
subclass; the CLI prints it as one line and exits with its code."""

from __future__ import annotations


class ImagekitError(Exception):
    """Root of every error imagekit reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, details: list[str] | None = None,
                 problems: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or []
        self.problems = problems or []   # several independent problems, one line each

    def lines(self) -> list[str]:
        """What a user reads: each problem, or the message."""
        return self.problems or [self.message]

    def __str__(self) -> str:
        return self.message


class UsageError(ImagekitError):
    """A bad command line: a flag value, a reference or a tag that cannot work."""

    exit_code = 2


class SpecError(ImagekitError):
    """A spec file is missing, unreadable or invalid (one line per problem)."""

    exit_code = 3


class CompatError(SpecError):
    """Framework / Python / CUDA / device combination that cannot work."""

    exit_code = 4


class ConfigError(ImagekitError):
    exit_code = 3


class EngineUnavailable(ImagekitError):
    exit_code = 5


class EngineError(ImagekitError):
    """The engine refused a request (its own reason is the message)."""

    exit_code = 16


class EngineStreamError(EngineError):
    """The engine accepted a build, push or load and reported a failure inside
    its stream; the stage that asked turns it into its own error."""


class BuildError(ImagekitError):
    exit_code = 6


class FetchError(ImagekitError):
    exit_code = 7


class SmokeError(ImagekitError):
    exit_code = 8


class GpuUnavailable(SmokeError):
    exit_code = 9


class PlatformMismatch(SmokeError):
    """The image cannot run on the target platform's driver or GPUs."""

    exit_code = 17


class PushError(ImagekitError):
    exit_code = 10


class DirectPushUnsupported(PushError):
    """What imagekit's own push path cannot do (foreign layers, several images
    in one export, a registry without API v2 or with an unknown auth scheme);
    the engine's push can, and push falls back to it."""


class AuthError(PushError):
    exit_code = 11


class SmokeGateError(PushError):
    exit_code = 12


class SaveError(ImagekitError):
    exit_code = 13


class SbomError(SaveError):
    """`imagekit sbom`: the image's contents could not be listed or written
    (exit 13, as a failed save: both write a record of an image to a file)."""


class LoadError(ImagekitError):
    exit_code = 14


class DiskFullError(ImagekitError):
    exit_code = 15


class LockError(ImagekitError):
    """A requirements.lock is missing a package, out of date with its spec, the
    matrix or imagekit.toml (`imagekit lock --check`, and a build that would
    install it), or cannot be read or written."""
    exit_code = 18


class NotReproducible(ImagekitError):
    """`imagekit build --check-reproducible`: two cold builds of the image made
    a layer differently (the report names the layer, its first paths and why)."""

    exit_code = 19


class Interrupted(ImagekitError):
    exit_code = 130


EXIT_CODES: list[tuple[int, str]] = [
    (0, "success"),
    (1, "unexpected internal error (run with IMAGEKIT_DEBUG=1 for a traceback)"),
    (2, "bad command-line usage"),
    (3, "invalid spec or config file"),
    (4, "impossible framework / Python / CUDA / device combination"),
    (5, "no Docker engine answers"),
    (6, "image build failed"),
    (7, "fetching Python packages into the wheelhouse failed"),
    (8, "smoke test failed (training, timeout, expected output)"),
    (9, "a GPU was required (--gpu require) but the engine has none"),
    (10, "push failed (registry refused or unreachable)"),
    (11, "registry authentication failed"),
    (12, "push refused: this image has not passed its smoke test"),
    (13, "save failed"),
    (14, "load failed (corrupt, truncated or mismatched archive)"),
    (15, "disk full"),
    (16, "the Docker engine refused a request (its reason is printed)"),
    (17, "the image does not fit the target platform's NVIDIA driver or GPU architecture"),
    (18, "a requirements.lock is out of date or does not hold a package the image needs"),
    (19, "not reproducible: two cold builds (--check-reproducible) made a layer differently"),
    (130, "interrupted (Ctrl-C)"),
]


def attempts(n: int) -> str:
    """"1 attempt", "3 attempts": how many tries a failure took, for its message."""
    return f"{n} attempt{'' if n == 1 else 's'}"

"""The engine seam, the only package that knows Docker's and buildx's formats.

- `types`: `EngineAPI`, what the stages need from an engine, and the typed
  items its streams become (build steps, layer progress, facts);
- `api`: `Engine`, that protocol over the Docker Engine API;
- `wire`: the API's HTTP client, on the standard library;
- `dockerconfig`: where the engine is, and registry credentials, from the
  environment and the Docker config;
- `buildx`: the buildx plugin, and BuildKit builds through it;
- `export`: the one reader of an engine's image export (`docker save`);
- `ssh`: ssh:// engines through the system's ssh client (loaded only for
  them by `api`).

Stages import from here; nothing outside this package speaks to the engine or
parses buildx's output. The buildx module is loaded when one of its names
is first asked for: a verb that builds nothing (push, save, load) does not
pay for it at its start."""

from .api import ClassicBuilder, Engine, endpoint, identity_of
from .types import (
    BUILDKIT,
    BUILDKIT_SINCE,
    CLASSIC,
    HINT,
    BuildCached,
    BuildDone,
    Builder,
    BuildItem,
    BuildOutput,
    BuildStep,
    ContainerState,
    EngineAPI,
    EngineFacts,
    ImageInfo,
    LayerProgress,
    PushDone,
    PushItem,
    RunAs,
)

__all__ = ["BUILDKIT", "BUILDKIT_SINCE", "CLASSIC", "CLI_PLUGIN_DIRS", "HINT", "BuildCached",
           "BuildDone", "BuildItem", "BuildOutput", "BuildStep", "Builder", "Buildx",
           "BuildxBuilder", "ClassicBuilder", "ContainerState", "Engine", "EngineAPI", "RawJson",
           "choose",
           "EngineFacts", "ImageInfo", "LayerProgress", "PushDone", "PushItem", "RunAs", "endpoint",
           "find_buildx", "identity_of"]


_BUILDX = ("CLI_PLUGIN_DIRS", "Buildx", "BuildxBuilder", "RawJson", "choose", "find_buildx")


def __getattr__(name: str):
    if name in _BUILDX:
        from . import buildx
        return getattr(buildx, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The `imagekit` command's entry point. A verb's own work is often short (a
push of layers a registry on the same machine mostly holds takes a few
seconds), so what Python does before it counts: the modules are loaded with
the cyclic garbage collector paused (loading makes many objects and no
garbage) and then frozen out of its later passes, and pydantic is told not to
look for plugins in every installed package, which imagekit never uses. A
user's own PYDANTIC_DISABLE_PLUGINS is kept."""

from __future__ import annotations

import gc
import os


def run() -> None:
    gc.disable()
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        from .cli import run as cli_run
    finally:
        gc.enable()
    gc.freeze()
    cli_run()

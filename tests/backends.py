"""The two transport backends, as the tests name them and hand them to child
processes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Backend:
    name: str
    module: ModuleType

    def __str__(self) -> str:
        return self.name


def backend_env(name: str) -> dict[str, str]:
    """Environment for a child process that must pick the named backend."""
    env = dict(os.environ)
    if name == "python":
        env["ARRAYWIRE_NO_EXTENSIONS"] = "1"
    else:
        env.pop("ARRAYWIRE_NO_EXTENSIONS", None)
    return env

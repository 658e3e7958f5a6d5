"""The ``arraywire`` command line."""

from arraywire._cli.main import main

__all__ = ["main"]

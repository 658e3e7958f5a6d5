"""Picks the transport backend once, at import.

The compiled ``_transport_c`` is used when it was built; ARRAYWIRE_NO_EXTENSIONS=1
(any value but "" or "0") forces the pure-Python ``_transport_py``. Both
modules stay importable by name.
"""

from __future__ import annotations

import os
from types import ModuleType

from arraywire import _transport_py

NO_EXTENSIONS = os.environ.get("ARRAYWIRE_NO_EXTENSIONS", "") not in ("", "0")

impl: ModuleType = _transport_py
if not NO_EXTENSIONS:
    try:
        from arraywire import _transport_c
    except ImportError:  # built without a compiler: the pure twin serves
        pass
    else:
        impl = _transport_c

BACKEND: str = impl.BACKEND

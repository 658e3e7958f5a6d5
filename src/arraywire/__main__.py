"""``python -m arraywire``: the command line."""

from arraywire._cli import main

raise SystemExit(main())

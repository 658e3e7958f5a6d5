"""``python -m arraywire``: the command line."""

from arraywire._cli.main import main

raise SystemExit(main())

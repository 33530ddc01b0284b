"""``python -m certun`` runs the command-line interface."""

from certun.cli import main

raise SystemExit(main())

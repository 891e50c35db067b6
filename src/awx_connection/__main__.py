"""``python -m awx_connection`` runs the command-line interface."""

from ._cli import main

raise SystemExit(main())

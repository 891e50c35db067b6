"""``python -m awx_connection`` runs the command-line interface."""

from .cli import main

raise SystemExit(main())

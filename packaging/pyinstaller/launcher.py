"""Entry point of the frozen bundle: the same ``main`` as the installed command."""

from app.cli import main

raise SystemExit(main())

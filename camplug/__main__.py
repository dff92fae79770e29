"""``python -m camplug``: the command-line interface (see ``camplug.cli``)."""

from __future__ import annotations

from camplug.cli import main

raise SystemExit(main())

"""``python -m daemon.cli``: the ``ki67node`` command line."""

from __future__ import annotations

import sys

from daemon.cli.app import main

sys.exit(main())

"""``python -m helix.planner``: the same as ``python -m helix plan``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())

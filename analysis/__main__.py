"""`python -m analysis --experiment NAME …` (the same as `pclc analyze`)."""

from __future__ import annotations

from analysis.cli import main

raise SystemExit(main())

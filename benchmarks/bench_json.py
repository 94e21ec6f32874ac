"""The `--json` output every benchmark script shares: its numbers plus whether they came from smoke sizes."""

from __future__ import annotations

import argparse
import json
from typing import Any


def write_numbers(args: argparse.Namespace, **numbers: Any) -> None:
    """Write `numbers` and `smoke_test` to `args.json` as indented JSON, when the run was asked for it."""
    if args.json:
        args.json.write_text(json.dumps({**numbers, "smoke_test": args.smoke_test}, indent=2))

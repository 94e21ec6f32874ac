"""`python -m sweeps CONFIG.yaml [...]`: exactly `pclc sweep` (one parser, one preflight, one code path),
for `ray job submit -- python -m sweeps …` on a cluster."""

from __future__ import annotations

import sys

from sweeps.cli import main as pclc_main


def main(argv: list[str] | None = None) -> int:
    return pclc_main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

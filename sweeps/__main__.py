"""`python -m sweeps CONFIG.yaml [...]`: the same as `pclc sweep`, for `ray job submit -- python -m sweeps …`."""

from __future__ import annotations

import argparse
import sys

from sweeps.arguments import add_sweep_arguments


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeps", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    add_sweep_arguments(parser)
    args = parser.parse_args(argv)
    from sweeps.driver import sweep_command

    try:
        return sweep_command(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        if args.debug:
            raise
        print(f"python -m sweeps: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``fleet``: the cloud side's command line (up, drill, check, and ``aws iot``-style job
commands). Usage errors are one line naming the bad option; exit status 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from devicesim import __version__
from fleet import awscli, provision
from fleet.drill import cli as drill_cli
from fleet.service import up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fleet {__version__}")
    parser.add_argument("--log-level", default="WARNING",
                        help="DEBUG, INFO, WARNING (default) or ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("up", help="run a broker and the emulated AWS IoT Jobs service")
    up.add_arguments(p)
    p.set_defaults(run=up.run)
    drill_cli.register(sub)
    provision.register(sub)
    awscli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        return int(args.run(args))
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"fleet {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

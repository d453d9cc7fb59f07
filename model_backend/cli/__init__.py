"""`irg-motion`, the command line (also `python -m model_backend`); see docs/cli.md.

Every command that needs torch imports it when it runs, so `irg-motion inspect` and
`--help` stay fast. Commands that run the model (`generate`, `critique`, `refine`,
`caption`) load the Engine in this process and consume the same events the backend
server streams; `decode` and `encode` load only the VQ-VAE.

Exit status: 0 success, 1 the model produced nothing usable, 2 bad input (missing
files, wrong shapes, bad options), 130 interrupted.
"""
from __future__ import annotations

import logging
import sys

from ..wire.manifest import ModelFolderError
from .common import EXIT_INTERRUPTED, EXIT_USAGE, CliError, fill_in_model
from .parser import build_parser

def main(argv: list[str] | None = None) -> int:
    """Run `irg-motion` with `argv` (default: sys.argv[1:]); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command != "serve":  # serve configures its own logging
        logging.basicConfig(stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
    try:
        fill_in_model(args)
        return args.run(args)
    except CliError as exc:
        print(f"irg-motion {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except ModelFolderError as exc:
        print(f"irg-motion {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"irg-motion {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

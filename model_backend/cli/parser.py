"""The `irg-motion` parser, built from each command module's own `add_*` function."""
from __future__ import annotations

import argparse

from . import codec, extend, folder, reasoning, serve
from .common import common_parents

# In the order `irg-motion --help` lists them.
COMMANDS = (folder.add_make_fixture, serve.add_serve, reasoning.add_generate, folder.add_inspect, codec.add_decode,
            codec.add_encode, reasoning.add_critique, reasoning.add_refine, extend.add_extend, reasoning.add_caption,
            codec.add_to_bvh, folder.add_convert)


def build_parser() -> argparse.ArgumentParser:
    """The `irg-motion` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="irg-motion", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="IRG-MotionLLM from the command line: text to motion, critique, refinement, "
                    "encoding and decoding, and the backend server the Blender add-on starts.",
        epilog="Run `irg-motion COMMAND --help` for a command's options and examples; docs/cli.md has them all.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = common_parents()
    for add in COMMANDS:
        add(subs, parents)
    return parser

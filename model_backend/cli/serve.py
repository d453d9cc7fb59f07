"""`irg-motion serve`: the backend over stdin/stdout (the add-on's process) or TCP (docs/protocol.md)."""
from __future__ import annotations

import argparse
from typing import Any

from .common import CliError, subparser

def cmd_serve(args: argparse.Namespace) -> int:
    if args.listen is None:
        if not args.stdio:
            raise CliError("choose a transport: --stdio (JSON lines on stdin/stdout, for the add-on's own "
                           "process) or --listen HOST:PORT (a network server, docs/protocol.md#transports)")
        if args.token_file is not None or args.allow_remote_shutdown or args.max_clients is not None:
            raise CliError("--token-file, --allow-remote-shutdown and --max-clients only apply to --listen")
        from ..serve.server import serve_stdio

        return serve_stdio(args.model, args.device, args.precision)
    from ..serve.net_server import MAX_CLIENTS, ServerConfigError, serve_tcp, server_config

    try:  # checked before torch is imported: a refused address fails at once
        config = server_config(args.listen, args.token_file, allow_remote_shutdown=args.allow_remote_shutdown,
                               max_clients=MAX_CLIENTS if args.max_clients is None else args.max_clients)
    except ServerConfigError as exc:
        raise CliError(str(exc)) from None
    return serve_tcp(args.model, args.device, args.precision, config)


def add_serve(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `serve` command and its arguments."""
    v, model, motion, sampling = p["verbose"], p["model"], p["motion"], p["sampling"]
    sub = subparser(subs, "serve", "run the backend: JSON lines on stdin/stdout or TCP (docs/protocol.md)",
                     [v, model], cmd_serve)
    transport = sub.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the add-on's own process)")
    transport.add_argument("--listen", metavar="HOST:PORT", default=None,
                           help="serve clients over TCP; HOST defaults to 127.0.0.1, port 0 picks a free one. "
                                "Any non-loopback HOST needs a token")
    sub.add_argument("--token-file", metavar="FILE", default=None,
                     help="with --listen: every client must send this token first (default: $IRG_SERVER_TOKEN)")
    sub.add_argument("--allow-remote-shutdown", action="store_true",
                     help="with --listen: a client's shutdown request stops the server (default: it ends only "
                          "that client's session)")
    sub.add_argument("--max-clients", type=int, default=None, metavar="N",
                     help="with --listen: most simultaneous connections (default 16)")

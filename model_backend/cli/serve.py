"""`irg-motion serve`: the backend over stdin/stdout (the add-on's process) or HTTP (docs/protocol.md)."""
from __future__ import annotations

import argparse
from typing import Any

from .common import CliError, subparser

HTTP_ONLY = ("token_file", "tls_cert", "tls_key", "max_body_mb", "max_queue", "max_per_client", "max_active",
             "time_slice", "send_timeout", "header_timeout", "body_timeout")


def cmd_serve(args: argparse.Namespace) -> int:
    if args.listen is not None:
        raise CliError("the raw TCP transport (--listen) was retired: serve over HTTP with --http HOST:PORT "
                       "(docs/protocol.md#http) and point the add-on at http://HOST:PORT")
    options = {"data_parallel": args.data_parallel} if args.engine == "vllm" else None
    if args.data_parallel != 1 and args.engine != "vllm":
        raise CliError("--data-parallel needs --engine vllm")
    if args.http is None:
        if not args.stdio:
            raise CliError("choose a transport: --stdio (JSON lines on stdin/stdout, for the add-on's own "
                           "process) or --http HOST:PORT (a server for a studio, docs/protocol.md#http)")
        given = [f"--{name.replace('_', '-')}" for name in HTTP_ONLY if getattr(args, name) is not None]
        if given:
            raise CliError(f"{', '.join(given)} only apply to --http")
        from ..serve.server import serve_stdio

        return serve_stdio(args.model, args.device, args.precision, engine=args.engine, options=options)
    from ..serve.access import AccessError
    from ..serve.http import HttpLimits, http_config, serve_http

    defaults = HttpLimits()
    limits = HttpLimits(
        max_body_bytes=int((args.max_body_mb or defaults.max_body_bytes / 2**20) * 2**20),
        **{name: getattr(args, option) for name, option in (
            ("max_queue", "max_queue"), ("max_per_client", "max_per_client"), ("max_active", "max_active"),
            ("time_slice_s", "time_slice"), ("send_timeout_s", "send_timeout"),
            ("header_timeout_s", "header_timeout"), ("body_timeout_s", "body_timeout"))
           if getattr(args, option) is not None})
    try:  # checked before torch is imported: a refused address or token file fails at once
        config = http_config(args.http, args.token_file, tls_cert=args.tls_cert, tls_key=args.tls_key, limits=limits)
    except AccessError as exc:
        raise CliError(str(exc)) from None
    return serve_http(args.model, args.device, args.precision, config, args.engine, options)


def add_serve(subs: Any, p: dict[str, argparse.ArgumentParser]) -> None:
    """The `serve` command and its arguments."""
    v, model = p["verbose"], p["model"]
    sub = subparser(subs, "serve", "run the backend: JSON lines on stdin/stdout, or HTTP (docs/protocol.md)",
                    [v, model], cmd_serve)
    transport = sub.add_mutually_exclusive_group()
    transport.add_argument("--stdio", action="store_true", help="talk over stdin/stdout (the add-on's own process)")
    transport.add_argument("--http", metavar="HOST:PORT", default=None,
                           help="serve clients over HTTP; HOST defaults to 127.0.0.1, port 0 picks a free one. "
                                "Any non-loopback HOST needs a token")
    transport.add_argument("--listen", metavar="HOST:PORT", default=None, help=argparse.SUPPRESS)  # retired
    sub.add_argument("--engine", choices=("transformers", "vllm"), default="transformers",
                     help="transformers (default): one sequence at a time, requests take turns; vllm: continuous "
                          "batching (needs vLLM: make venv-vllm)")
    sub.add_argument("--data-parallel", type=int, default=1, metavar="N",
                     help="with --engine vllm on GPUs: N engine replicas, one per GPU")
    http = sub.add_argument_group("--http options (docs/protocol.md#http lists every bound)")
    http.add_argument("--token-file", metavar="FILE", default=None,
                      help="tokens, one per line; clients send `Authorization: Bearer TOKEN` "
                           "(default: $IRG_SERVER_TOKEN)")
    http.add_argument("--tls-cert", metavar="FILE", default=None, help="PEM certificate: serve HTTPS")
    http.add_argument("--tls-key", metavar="FILE", default=None, help="PEM private key of --tls-cert")
    http.add_argument("--max-body-mb", type=float, default=None, metavar="N", help="largest request body (64)")
    http.add_argument("--max-queue", type=int, default=None, metavar="N",
                      help="unfinished requests on the server before 429 (64)")
    http.add_argument("--max-per-client", type=int, default=None, metavar="N",
                      help="unfinished requests of one token before 429 (16)")
    http.add_argument("--max-active", type=int, default=None, metavar="N",
                      help="transformers engine: requests decoding in turns at once (4)")
    http.add_argument("--time-slice", type=float, default=None, metavar="S",
                      help="transformers engine: decoding seconds per turn while others wait (1)")
    http.add_argument("--send-timeout", type=float, default=None, metavar="S",
                      help="drop a client that takes none of its stream for S seconds (30)")
    http.add_argument("--header-timeout", type=float, default=None, metavar="S",
                      help="close a connection without complete request headers after S seconds (10)")
    http.add_argument("--body-timeout", type=float, default=None, metavar="S",
                      help="refuse a request whose body takes longer than S seconds (30)")

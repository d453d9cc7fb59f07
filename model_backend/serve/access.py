"""Who may use a network server: the address rule, the tokens and their constant-time check.

Standard library only, so the CLI can refuse a bad address or token file before torch loads.

- A server without a token may only bind a loopback address (only users of that machine
  can reach it); any other address needs at least one token.
- Tokens come from `--token-file` (one token per line; blank lines and `#` comments are
  skipped; each at least 16 characters) or else `$IRG_SERVER_TOKEN` (one token). Each
  token is one client identity: a request can cancel only requests sent with its token.
- A token is compared in constant time against every configured token (SHA-256 digests
  and `hmac.compare_digest`, so neither a prefix nor the length leaks), and never logged:
  logs and ids use its fingerprint (the first 12 hex digits of its SHA-256).
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Mapping

__all__ = ["AccessError", "TokenSet", "TOKEN_ENV", "MIN_TOKEN_CHARS", "parse_address", "is_loopback",
           "read_tokens", "fingerprint", "check_exposure", "format_address"]

log = logging.getLogger("irg_motion.access")

TOKEN_ENV = "IRG_SERVER_TOKEN"
MIN_TOKEN_CHARS = 16
TOKEN_HINT = ('make one with `python -c "import secrets; print(secrets.token_urlsafe(32))" > token.txt; '
              'chmod 600 token.txt`')


class AccessError(ValueError):
    """A bad address, token file or exposure, with a message naming the fix."""


def format_address(host: str, port: int) -> str:
    """HOST:PORT, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, option: str = "--http") -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` -> (host, port); the host defaults to 127.0.0.1."""
    spec = text.strip()
    if spec.startswith("["):
        host, sep, port = spec[1:].partition("]:")
        if not sep:
            raise AccessError(f"{option} {text!r}: write an IPv6 address as [ADDRESS]:PORT, e.g. [::1]:7700")
    elif spec.count(":") > 1:
        raise AccessError(f"{option} {text!r}: write an IPv6 address in brackets, e.g. [::1]:7700")
    else:
        host, _, port = spec.rpartition(":")
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise AccessError(f"{option} {text!r}: the port must be a number 0..65535 (0 picks a free port), "
                          f"e.g. {option} 127.0.0.1:7700")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when `host` (an address or a name) means only this machine; a name counts only if every
    address it resolves to is a loopback address."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise AccessError(f"cannot resolve the host {host!r} ({exc}); give an address such as 127.0.0.1") from None
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def fingerprint(token: str) -> str:
    """Names a token in logs and scopes without revealing it."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


class TokenSet:
    """The configured tokens; `match` finds the caller's in constant time."""

    def __init__(self, tokens: list[str]):
        self._digests = [_digest(t) for t in tokens]
        self._prints = [fingerprint(t) for t in tokens]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def __repr__(self) -> str:  # never the tokens
        return f"TokenSet({len(self)} token(s))"

    def match(self, given: str | None) -> str | None:
        """The fingerprint of the configured token equal to `given`, or None (every token is compared)."""
        if not isinstance(given, str):
            return None
        digest, found = _digest(given), None
        for expected, name in zip(self._digests, self._prints):
            if hmac.compare_digest(digest, expected):
                found = name
        return found


def read_tokens(token_file: str | os.PathLike | None, environ: Mapping[str, str] = os.environ) -> TokenSet:
    """The tokens of `token_file` (first choice) or $IRG_SERVER_TOKEN; an empty set when neither is given.

    A missing or empty file, or a token shorter than 16 characters, is an AccessError naming
    the line. A file others can read is logged as a warning.
    """
    if token_file is not None:
        path = Path(token_file).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            reason = "it is a folder" if path.is_dir() else f"{type(exc).__name__}: {exc.args[-1]}"
            raise AccessError(f"--token-file {path}: cannot read it ({reason}); {TOKEN_HINT}") from None
        lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
        tokens = [(f"--token-file {path} line {n}", t) for n, t in lines if t and not t.startswith("#")]
        if not tokens:
            raise AccessError(f"--token-file {path} holds no token; {TOKEN_HINT}")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the token file %s can be read by other users: run `chmod 600 %s`", path, path)
    else:
        token = environ.get(TOKEN_ENV, "").strip()
        tokens = [(f"${TOKEN_ENV}", token)] if token else []
    for source, token in tokens:
        if len(token) < MIN_TOKEN_CHARS:
            raise AccessError(f"the token in {source} has {len(token)} characters; use at least "
                              f"{MIN_TOKEN_CHARS} random ones: {TOKEN_HINT}")
    return TokenSet([t for _, t in tokens])


def check_exposure(host: str, port: int, tokens: TokenSet, option: str = "--http") -> None:
    """Refuse a non-loopback address without a token: anyone who can reach the machine could use it."""
    if not tokens and not is_loopback(host):
        raise AccessError(
            f"refusing to listen on {format_address(host, port)} without a token: anyone who can reach this "
            f"machine could use it. Give --token-file FILE (or set ${TOKEN_ENV}; {TOKEN_HINT}), or listen on "
            f"127.0.0.1 and let remote users connect through an SSH tunnel (ssh -L 7700:127.0.0.1:7700 HOST)")

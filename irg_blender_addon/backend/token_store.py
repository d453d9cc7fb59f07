"""Where a server token is kept: the operating system's keyring when one is usable, else nowhere here.

Plain Python (no bpy). The `keyring` package is optional (Blender does not ship it; install it
into Blender's Python to use it). It is "usable" when it imports and its chosen backend is a
real keyring (macOS Keychain, Windows Credential Locker, Secret Service / KWallet on Linux),
not its fail or null backend. Tokens are stored per server URL under the service name
`irg-motion`. Nothing here logs a token. When no keyring is usable the preferences keep the
token instead (ui/prefs.py says so next to the field).
"""
from __future__ import annotations

from typing import Any

__all__ = ["SERVICE", "keyring_name", "store_token", "load_token", "forget_token"]

SERVICE = "irg-motion"


def _keyring() -> Any | None:
    """The keyring module when its backend is a real keyring, else None."""
    try:
        import keyring
        backend = keyring.get_keyring()
    except Exception:  # not installed, or a broken backend configuration
        return None
    name = type(backend).__module__ + "." + type(backend).__name__
    if getattr(backend, "priority", 0) <= 0 or "fail" in name or "null" in name:
        return None
    return keyring


def keyring_name() -> str | None:
    """A readable name of the usable keyring (e.g. 'SecretService Keyring'), or None when there is none."""
    keyring = _keyring()
    if keyring is None:
        return None
    backend = keyring.get_keyring()
    return getattr(backend, "name", None) or type(backend).__name__


def store_token(url: str, token: str) -> bool:
    """Keep `token` for `url` in the keyring; False when no keyring is usable (the caller keeps it)."""
    keyring = _keyring()
    if keyring is None or not url.strip():
        return False
    try:
        keyring.set_password(SERVICE, url.strip(), token)
    except Exception:  # locked or refused: the caller falls back to the preferences
        return False
    return True


def load_token(url: str) -> str | None:
    """The token kept for `url`, or None."""
    keyring = _keyring()
    if keyring is None or not url.strip():
        return None
    try:
        return keyring.get_password(SERVICE, url.strip())
    except Exception:
        return None


def forget_token(url: str) -> None:
    """Remove the token kept for `url` (nothing when there is none)."""
    keyring = _keyring()
    if keyring is None or not url.strip():
        return
    try:
        keyring.delete_password(SERVICE, url.strip())
    except Exception:
        pass

"""One backend per configuration, local or remote, and only one model in memory at a time.

Plain Python (no bpy). `client_for(settings)` returns the `remote.RemoteBackendClient` of
the settings' server URL when one is set, else the `local.BackendClient` of (python,
model folder, device, precision), validated (BackendError naming the fix) but not
started. Switching configuration stops the other backends. Every backend stops when the
add-on is unregistered (`shutdown_all`) and when Python exits (atexit).
"""
from __future__ import annotations

import atexit

from . import token_store
from .base import Backend
from .local import BackendClient, registry_key, validate_model_dir, validate_python
from .remote import CONNECT_TIMEOUT_S, RemoteBackendClient

_local: dict[tuple[str, str, str, str], BackendClient] = {}
_remote: dict[tuple[str, str, str], RemoteBackendClient] = {}


def get_client(python, model_dir, device: str = "auto", precision: str = "auto") -> BackendClient:
    """The local client for this configuration, validated (BackendError) but not started.

    Starting a different configuration stops the others (and any remote connection):
    only one model stays in memory."""
    key = registry_key(python, model_dir, device, precision)
    validate_python(key[0])
    validate_model_dir(key[1])
    client = _local.get(key)
    if client is None:
        _stop(_local)
        _stop(_remote)
        client = _local[key] = BackendClient(key[0], key[1], device, precision)
    return client


def get_remote_client(url: str, token: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> RemoteBackendClient:
    """The client for this URL and token, validated (BackendError) but not connected.

    Switching to another server or token disconnects the previous one."""
    client = RemoteBackendClient(url, token, timeout)
    client.validate()
    existing = _remote.get(client.key)
    if existing is not None:
        return existing
    _stop(_remote)
    _remote[client.key] = client
    return client


def client_for(settings) -> Backend:
    """The backend for merged Settings: a RemoteBackendClient when `settings.server_url` is set
    (its token from `settings.server_token`), else the local process of get_client().

    Validated (BackendError naming the fix) but not started or connected."""
    url = (getattr(settings, "server_url", "") or "").strip()
    if url:
        token = getattr(settings, "server_token", "") or token_store.load_token(url)
        client = get_remote_client(url, token or None)
        _stop(_local)
        return client
    return get_client(settings.backend_python, settings.model_dir, settings.device, settings.precision)


def find_client(settings) -> Backend | None:
    """The backend for these Settings if one exists (never creates, validates or starts one)."""
    url = (getattr(settings, "server_url", "") or "").strip()
    if url:
        return next((c for c in _remote.values() if c.url == url), None)
    return _local.get(registry_key(settings.backend_python, settings.model_dir, settings.device,
                                   settings.precision))


def running_clients() -> list[Backend]:
    """Backends (local processes and remote connections) that are starting or ready."""
    return [c for c in (*_local.values(), *_remote.values()) if c.state in ("starting", "ready")]


def shutdown_all() -> None:
    """Stop every backend and disconnect every server (add-on unregister, Blender quit)."""
    _stop(_local)
    _stop(_remote)


def _stop(clients: dict) -> None:
    while clients:
        _, client = clients.popitem()
        client.stop()


atexit.register(shutdown_all)

"""Server tokens in the OS keyring (the real `keyring` package, with an in-memory keyring backend standing
in for the OS service this headless machine lacks), and the fallback when no keyring is usable."""
from __future__ import annotations

import pytest

keyring = pytest.importorskip("keyring", reason="keyring is not installed in this environment")
from keyring.backend import KeyringBackend  # noqa: E402

from irg_blender_addon.backend import token_store  # noqa: E402

TOKEN = "tok-0123456789abcdefghij"


class MemoryKeyring(KeyringBackend):
    """A real keyring backend (the package's own base class) that keeps passwords in a dict."""

    priority = 1
    name = "Memory Keyring"

    def __init__(self):
        super().__init__()
        self.items: dict[tuple[str, str], str] = {}

    def get_password(self, service, username):
        return self.items.get((service, username))

    def set_password(self, service, username, password):
        self.items[(service, username)] = password

    def delete_password(self, service, username):
        self.items.pop((service, username), None)


@pytest.fixture()
def memory_keyring():
    saved = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    yield ring
    keyring.set_keyring(saved)


def test_a_token_round_trips_through_the_keyring_per_url(memory_keyring):
    assert token_store.keyring_name() == "Memory Keyring"
    assert token_store.store_token(" http://gpu-box:7700 ", TOKEN)
    assert memory_keyring.items == {("irg-motion", "http://gpu-box:7700"): TOKEN}
    assert token_store.load_token("http://gpu-box:7700") == TOKEN
    assert token_store.load_token("http://other:7700") is None
    token_store.forget_token("http://gpu-box:7700")
    assert token_store.load_token("http://gpu-box:7700") is None and memory_keyring.items == {}


def test_without_a_usable_keyring_nothing_is_stored():
    from keyring.backends import fail

    saved = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        assert token_store.keyring_name() is None
        assert token_store.store_token("http://gpu-box:7700", TOKEN) is False  # the preferences keep it
        assert token_store.load_token("http://gpu-box:7700") is None
    finally:
        keyring.set_keyring(saved)

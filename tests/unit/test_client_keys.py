"""Which client keys the router accepts while a reload is being prepared (ClientKeys.revoked_by):
removals act at once, additions wait for the swap."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.requests import Request

from aibox_router.config_load import parse_config
from aibox_router.errors import AuthenticationError
from aibox_router.server import ClientKeys


def keys(*clients: tuple[str, str]) -> ClientKeys:
    data: dict[str, Any] = {"backends": {"b": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                            "targets": {"t": {"backend": "b", "model": "m"}}, "default_target": "t",
                            "clients": [{"name": n, "key": k} for n, k in clients]}
    return ClientKeys(parse_config(data))


def who(accepted: ClientKeys, key: str) -> str | None:
    request = Request({"type": "http", "headers": [(b"authorization", f"Bearer {key}".encode())]})
    try:
        return accepted.identify(request)
    except AuthenticationError:
        return None


OLD = (("alice", "key-alice-0000000001"), ("bob", "key-bob-0000000001"))


def test_a_removed_client_is_refused_and_the_others_stay() -> None:
    early = keys(*OLD).revoked_by(keys(("alice", "key-alice-0000000001")))
    assert who(early, "key-alice-0000000001") == "alice"
    assert who(early, "key-bob-0000000001") is None


def test_a_rotated_key_is_refused_and_the_new_one_waits_for_the_swap() -> None:
    early = keys(*OLD).revoked_by(keys(("alice", "key-alice-0000000002"), ("bob", "key-bob-0000000001")))
    assert who(early, "key-alice-0000000001") is None and who(early, "key-alice-0000000002") is None
    assert who(early, "key-bob-0000000001") == "bob"


def test_a_key_moved_to_another_client_is_refused() -> None:
    early = keys(*OLD).revoked_by(keys(("carol", "key-bob-0000000001"), ("alice", "key-alice-0000000001")))
    assert who(early, "key-bob-0000000001") is None and who(early, "key-alice-0000000001") == "alice"


@pytest.mark.parametrize("new_clients", [(), (("carol", "key-carol-0000000001"),)])
def test_widening_waits_for_the_swap(new_clients: tuple[tuple[str, str], ...]) -> None:
    """A config that opens the router (no clients) or only adds keys changes nothing early."""
    early = keys(*OLD).revoked_by(keys(*OLD, *new_clients))
    assert not early.open and who(early, "key-carol-0000000001") is None
    assert who(early, "key-bob-0000000001") == "bob"
    opened = keys(*OLD).revoked_by(keys())
    assert not opened.open and who(opened, "key-nobody") is None


def test_keys_on_an_open_router_apply_at_once() -> None:
    early = keys().revoked_by(keys(("alice", "key-alice-0000000001")))
    assert who(early, "key-alice-0000000001") == "alice" and who(early, "anything") is None

"""The admin HTTP API (keys) and ``GET /usage``, against a real gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.harness import ADMIN_KEY, FREE, PAID, GatewayHarness, post, wait_until

ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def gw(make_env: Callable[..., dict[str, str]]) -> Iterator[GatewayHarness]:
    with GatewayHarness.from_env(make_env(rpm=100, per_day=100)) as harness:
        yield harness


def call(gw: GatewayHarness, method: str, path: str, headers: dict[str, str] | None = None,
         **kwargs: Any) -> httpx.Response:
    return httpx.request(method, gw.url + path, headers=ADMIN if headers is None else headers, timeout=10, **kwargs)


def test_admin_routes_do_not_exist_without_an_admin_key(make_env: Callable[..., dict[str, str]]) -> None:
    env = make_env()
    env.pop("MEGABRAIN_ADMIN_KEY")
    with GatewayHarness.from_env(env, pools=()) as bare:
        for method, path in (("GET", "/admin/keys"), ("POST", "/v1/admin/keys"), ("DELETE", "/admin/keys/x")):
            response = call(bare, method, path, json={"name": "x"})
            assert response.status_code == 404 and response.json()["error_type"] == "not_found"


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": ADMIN_KEY}])
def test_admin_routes_want_the_admin_key(gw: GatewayHarness, headers: dict[str, str]) -> None:
    response = call(gw, "GET", "/admin/keys", headers=headers)
    assert response.status_code == 401 and response.json()["error_type"] == "authentication_required"


def test_create_list_revoke(gw: GatewayHarness) -> None:
    created = call(gw, "POST", "/v1/admin/keys", json={"name": "alice", "rpm": 60, "monthly_budget": 5})
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith("mb-") and body["prefix"] == body["key"][:8]
    assert (body["name"], body["rpm"], body["monthly_budget"], body["revoked"]) == ("alice", 60, 5.0, False)
    listed = call(gw, "GET", "/admin/keys").json()["data"]
    assert [(k["id"], k["name"]) for k in listed] == [(body["id"], "alice")]
    assert "key" not in listed[0] and body["key"] not in call(gw, "GET", "/admin/keys").text
    assert call(gw, "DELETE", f"/admin/keys/{body['id']}").json() == {"id": body["id"], "revoked": True}
    assert call(gw, "GET", "/admin/keys").json()["data"][0]["revoked"] is True
    assert post(gw, PAID, key=body["key"]).json()["error_type"] == "authentication_required"
    missing = call(gw, "DELETE", "/admin/keys/nope")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"


@pytest.mark.parametrize(("payload", "param"), [({}, "name"), ({"name": " "}, "name"),
                                                ({"name": "x", "rpm": 0}, "rpm"),
                                                ({"name": "x", "monthly_budget": -1}, "monthly_budget"),
                                                ({"name": "x", "rpm": "many"}, "rpm"),
                                                ({"name": "x", "rpm": 2**70}, "rpm"),
                                                ({"name": "x", "rpm": 10**9}, "rpm"),
                                                ({"name": "x", "monthly_budget": 1e300}, "monthly_budget"),
                                                ({"name": "k" * 201}, "name"),
                                                ({"name": "k" * 1_000_000}, "name")])
def test_create_validates(gw: GatewayHarness, payload: dict[str, Any], param: str) -> None:
    response = call(gw, "POST", "/admin/keys", json=payload)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_create_accepts_the_bounds(gw: GatewayHarness) -> None:
    response = call(gw, "POST", "/admin/keys", json={"name": "k" * 200, "rpm": 1_000_000,
                                                     "monthly_budget": 1e9})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "k" * 200


def test_usage_per_key_and_anonymous(gw: GatewayHarness) -> None:
    key = call(gw, "POST", "/admin/keys", json={"name": "bob"}).json()
    assert post(gw, PAID, key=key["key"]).status_code == 200
    assert post(gw, FREE).status_code == 200  # anonymous

    def own() -> dict[str, Any]:
        response = call(gw, "GET", "/usage", headers={"authorization": f"Bearer {key['key']}"})
        assert response.status_code == 200
        return response.json()

    assert wait_until(lambda: bool(own()["data"]), 10)
    [row] = own()["data"]
    assert (row["model"], row["requests"], row["completion_tokens"]) == (PAID, 1, 16)
    assert float(row["cost"]) > 0 and own()["month_spend"] == pytest.approx(float(row["cost"]))
    admin_view = call(gw, "GET", f"/admin/keys/{key['id']}/usage", params={"days": 2}).json()
    assert admin_view["data"] == own()["data"]
    assert wait_until(lambda: bool(call(gw, "GET", "/admin/keys/anonymous/usage").json()["data"]), 10)
    [anon] = call(gw, "GET", "/admin/keys/anonymous/usage").json()["data"]
    assert (anon["model"], anon["requests"]) == (FREE, 1)
    assert call(gw, "GET", "/admin/keys/nope/usage").status_code == 404
    assert call(gw, "GET", "/admin/keys/anonymous/usage", params={"days": 0}).status_code == 400


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer mb-" + "z" * 43}])
def test_own_usage_needs_a_valid_key(gw: GatewayHarness, headers: dict[str, str]) -> None:
    response = call(gw, "GET", "/v1/usage", headers=headers)
    assert response.status_code == 401 and response.json()["error_type"] == "authentication_required"


@pytest.mark.parametrize("fields", [{"rpm": 2**70}, {"rpm": 0}, {"monthly_budget": -1.0}, {"name": "k" * 201}])
def test_cli_create_has_the_same_bounds(fields: dict[str, Any]) -> None:
    """``megabrain keys create`` with REDIS_URL writes to Redis itself: the admin API's bounds hold there too."""
    import argparse

    from api.cli.keys import KeysError, run_command

    class NeverCalled:
        def create(self, *args: Any) -> dict[str, Any]:
            raise AssertionError("a key out of bounds reached the store")

    args = argparse.Namespace(keys_command="create", json=False,
                              **{"name": "cli", "rpm": None, "monthly_budget": None, **fields})
    with pytest.raises(KeysError):
        run_command(NeverCalled(), args)  # type: ignore[arg-type]

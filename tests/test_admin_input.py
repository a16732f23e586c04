"""Bad admin input gets a 400 that names the problem and changes nothing: paging past any real
listing, misspelt fields; and usernames that hold a '/' are reachable by every user route."""

from __future__ import annotations

import httpx
import pytest
import redis

from tests.conftest import ADMIN, AppFactory, data_keys
from tests.support.console import sign_in

HUGE = "9223372036854775807"


def assert_bad_request(resp: httpx.Response, *words: str) -> None:
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["error"] == "invalid_request"
    for word in words:
        assert word in body["error_description"], body


@pytest.mark.parametrize("query, name", [
    (f"offset={HUGE}", "offset"), ("offset=1000000001", "offset"), ("offset=-1", "offset"),
    ("offset=1e3", "offset"), ("offset=%EF%BC%91", "offset"), ("limit=0", "limit"),
    ("limit=1001", "limit"), (f"limit={HUGE}", "limit"), ("limit=", "limit"),
])
async def test_paging_out_of_range_is_400_not_an_outage(app_factory: AppFactory, query: str,
                                                        name: str) -> None:
    async with app_factory() as http:
        assert_bad_request(await http.get(f"/admin/clients?{query}", headers=ADMIN), name)


async def test_paging_at_the_bounds_and_past_the_end(app_factory: AppFactory) -> None:
    async with app_factory() as http:
        resp = await http.get("/admin/clients?offset=1000000000&limit=1000", headers=ADMIN)
        assert resp.status_code == 200, resp.text
        assert resp.json()["clients"] == [] and resp.json()["offset"] == 10**9


async def test_a_console_page_past_any_listing_is_the_last_page(app_factory: AppFactory) -> None:
    async with app_factory() as http:
        created = await http.post("/admin/clients", headers=ADMIN, json={"name": "Only one"})
        assert created.status_code == 201
        console = await sign_in(http)
        resp = await console.get(f"/admin?page={HUGE}")
        assert resp.status_code == 200, resp.text
        assert "Only one" in resp.text


@pytest.mark.parametrize("field", ["grant_type", "scope", "redirect_uri", "secret"])
async def test_a_misspelt_client_field_is_refused_by_name(app_factory: AppFactory, redis_db: redis.Redis,
                                                          field: str) -> None:
    async with app_factory() as http:
        resp = await http.post("/admin/clients", headers=ADMIN, json={"name": "x", field: "read"})
        assert_bad_request(resp, f"Cannot set: {field}.")
        assert data_keys(redis_db) == []  # nothing was created


async def test_misspelt_fields_on_edit_and_on_users_are_refused(app_factory: AppFactory) -> None:
    async with app_factory() as http:
        client = (await http.post("/admin/clients", headers=ADMIN, json={"name": "x"})).json()
        resp = await http.patch(f"/admin/clients/{client['client_id']}", headers=ADMIN,
                                json={"scope": "read"})
        assert_bad_request(resp, "Cannot change: scope.")
        resp = await http.post("/admin/users", headers=ADMIN,
                               json={"username": "u", "password": "long enough password", "verify": True})
        assert_bad_request(resp, "Cannot set: verify.")
        assert (await http.get("/admin/users/u", headers=ADMIN)).status_code == 404


@pytest.mark.parametrize("username", ["a/b", "team/ops/alice", "x/unlock"])
async def test_a_username_with_a_slash_is_reachable(app_factory: AppFactory, username: str) -> None:
    path = "/admin/users/" + username.replace("/", "%2F")
    async with app_factory() as http:
        created = await http.post("/admin/users", headers=ADMIN,
                                  json={"username": username, "password": "long enough password"})
        assert created.status_code == 201, created.text
        got = await http.get(path, headers=ADMIN)
        assert got.status_code == 200 and got.json()["username"] == username
        patched = await http.patch(path, headers=ADMIN, json={"verified": True})
        assert patched.status_code == 200 and patched.json()["verified"] is True
        assert (await http.post(path + "/unlock", headers=ADMIN)).status_code == 204
        assert (await http.delete(path, headers=ADMIN)).status_code == 204
        assert (await http.get(path, headers=ADMIN)).status_code == 404


async def test_head_on_the_authorization_endpoint_answers_as_get(app_factory: AppFactory) -> None:
    async with app_factory() as http:
        for path in ("/oauth/authorize?client_id=nobody&response_type=code", "/oauth/logout"):
            get = await http.get(path)
            head = await http.head(path)
            assert head.status_code == get.status_code, (path, head.status_code, get.status_code)
            assert head.content == b""


@pytest.mark.parametrize("body, description", [
    (b'{"name": "a", "name": "b"}', "The parameter 'name' was sent more than once."),
    (b'{"name": "\\ud800"}', "The JSON body holds a string that is not valid Unicode."),
    (b'[]', "The JSON body must be an object."),
])
async def test_admin_documents_follow_the_one_body_rule(app_factory: AppFactory, redis_db: redis.Redis,
                                                        body: bytes, description: str) -> None:
    """The admin API reads bodies as every endpoint does: a repeated member is refused, not
    silently the last one; a lone surrogate is a 400, not a record that cannot be stored."""
    async with app_factory() as http:
        resp = await http.post("/admin/clients", content=body,
                               headers={**ADMIN, "Content-Type": "application/json"})
        assert_bad_request(resp, description)
        assert data_keys(redis_db) == []

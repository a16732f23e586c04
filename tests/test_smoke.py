from __future__ import annotations

import httpx

from tests.support.api import cc_token, introspect, new_client, new_user, password_token


async def test_client_credentials_round_trip(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    resp = await cc_token(http, client)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["access_token"].startswith("tsv_at_")
    info = await introspect(http, client, body["access_token"])
    assert info["active"] is True and info["client_id"] == client["client_id"]


async def test_password_and_refresh(http: httpx.AsyncClient) -> None:
    client = await new_client(http)
    await new_user(http)
    resp = await password_token(http, client)
    assert resp.status_code == 200, resp.text
    rt = resp.json()["refresh_token"]
    again = await http.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": rt},
                            auth=(client["client_id"], client["client_secret"]))
    assert again.status_code == 200, again.text
    replay = await http.post("/oauth/token", data={"grant_type": "refresh_token", "refresh_token": rt},
                             auth=(client["client_id"], client["client_secret"]))
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    info = await introspect(http, client, again.json()["access_token"])
    assert info["active"] is False

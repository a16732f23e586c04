"""The service on a real Redis Cluster (3 masters, 3 replicas): every grant, rotation and reuse
detection, revocation, introspection, codes, lockout, token reuse, invalidation across
instances, the user deletion cascade, admin listing, and a master failover mid-traffic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.support import authflow
from tests.support.api import active, auth, cc_token, new_client, new_user, password_token, refresh
from tests.support.apps import AppFactory, app_factory_for
from tests.support.config import ADMIN, ISSUER
from tests.support.console import sign_in, table_ids
from tests.support.dpop import DPoPKey
from tests.support.redis_servers import RedisClusterNodes
from tests.support.stored import token_key
from tokensvc.store import keys

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    """This module's own cluster: the failover test changes its topology."""
    cluster = RedisClusterNodes(tmp_path_factory.mktemp("cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_db(redis_cluster: RedisClusterNodes) -> Iterator[redis.RedisCluster]:
    """A cluster client on the emptied cluster."""
    r = redis_cluster.client()
    yield r
    r.close()


@pytest.fixture
def cluster_app_factory(cluster_db: redis.RedisCluster, redis_cluster: RedisClusterNodes) -> AppFactory:
    """Like `app_factory`, on the cluster (`redis_cluster=True`, the URL of one node)."""
    return app_factory_for(redis_cluster.url, redis_cluster=True)


def issued(resp: httpx.Response) -> dict[str, Any]:
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    return doc


async def revoke(http: httpx.AsyncClient, client: dict[str, Any], token: str,
                 hint: str | None = None) -> None:
    data = {"token": token} | ({"token_type_hint": hint} if hint else {})
    resp = await http.post("/oauth/revoke", data=data, auth=auth(client))
    assert resp.status_code == 200, resp.text


async def test_the_cluster_client_is_in_use(cluster_app_factory: AppFactory) -> None:
    async with cluster_app_factory() as http:
        svc = http.app.state.services  # type: ignore[attr-defined]
        assert svc.store.cluster is not None and svc.store.fast is None
        assert (await http.get("/readyz")).status_code == 200
        # Every script is loaded on every primary.
        for node in svc.store.cluster.get_primaries():
            with redis.Redis(host=node.host, port=node.port) as r:
                assert all(r.script_exists(*(s.sha for s in svc.store.scripts.values())))


async def test_every_grant_issues_and_rotation_detects_reuse(cluster_app_factory: AppFactory,
                                                             cluster_db: redis.RedisCluster) -> None:
    async with cluster_app_factory() as http:
        client, rs = await new_client(http), await new_client(http, name="rs", introspection="all")
        await new_user(http)
        cc = issued(await cc_token(http, client))
        assert await active(http, rs, cc["access_token"])
        pw = issued(await password_token(http, client))
        assert cluster_db.get(token_key(pw["refresh_token"])) is not None
        rotated = issued(await refresh(http, client, pw["refresh_token"]))
        assert await active(http, rs, rotated["access_token"])
        # The old refresh token again: reuse, and the whole grant ends.
        again = await refresh(http, client, pw["refresh_token"])
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        for token in (pw["access_token"], rotated["access_token"], rotated["refresh_token"]):
            assert not await active(http, rs, token)


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token"])
async def test_revocation_by_each_hint(cluster_app_factory: AppFactory, hint: str | None) -> None:
    async with cluster_app_factory() as http:
        client, rs = await new_client(http), await new_client(http, name="rs", introspection="all")
        await new_user(http)
        first = issued(await password_token(http, client))
        second = issued(await refresh(http, client, first["refresh_token"]))
        at1, at2, rt = first["access_token"], second["access_token"], second["refresh_token"]
        if hint == "access_token":
            await revoke(http, client, at2, hint)
            assert [await active(http, rs, t) for t in (at1, at2, rt)] == [True, False, True]
        else:
            await revoke(http, client, rt, hint)
            assert [await active(http, rs, t) for t in (at1, at2, rt)] == [False, False, False]


async def test_code_redemption_and_replay(cluster_app_factory: AppFactory) -> None:
    async with cluster_app_factory() as http:
        await new_user(http)
        app, rs = await authflow.public_app(http), await new_client(http, name="rs", introspection="all")
        code = (await authflow.get_code(http, app))["code"]
        tokens = issued(await authflow.redeem(http, app, code))
        assert await active(http, rs, tokens["access_token"])
        replay = await authflow.redeem(http, app, code)
        assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
        assert not await active(http, rs, tokens["access_token"])
        assert not await active(http, rs, tokens["refresh_token"])


async def test_lockout_and_unlock(cluster_app_factory: AppFactory, cluster_db: redis.RedisCluster) -> None:
    async with cluster_app_factory(max_user_login_attempts=3) as http:
        await new_user(http)
        client = await new_client(http)
        for _ in range(2):
            assert (await password_token(http, client, password="wrong")).status_code == 400
        assert (await password_token(http, client, password="wrong")).status_code == 423
        assert (await password_token(http, client)).status_code == 423
        assert int(cluster_db.get(keys.user_failures("alice")) or 0) == 3
        assert (await http.post("/admin/users/alice/unlock", headers=ADMIN)).status_code == 204
        issued(await password_token(http, client))


async def test_concurrent_identical_requests_share_one_token(cluster_app_factory: AppFactory) -> None:
    async with cluster_app_factory(reuse_tokens=True) as http:
        client = await new_client(http)
        answers = await asyncio.gather(*(cc_token(http, client) for _ in range(20)))
        assert len({issued(a)["access_token"] for a in answers}) == 1


async def test_rotated_secret_is_refused_at_once_by_another_instance(
        cluster_app_factory: AppFactory) -> None:
    async with cluster_app_factory() as one, cluster_app_factory() as two:
        client = await new_client(one)
        issued(await cc_token(two, client))  # `two` caches the verified secret
        rotated = await one.post(f"/admin/clients/{client['client_id']}/secret", headers=ADMIN)
        assert rotated.status_code == 200, rotated.text
        assert (await cc_token(two, client)).status_code == 401
        issued(await cc_token(two, {**client, "client_secret": rotated.json()["client_secret"]}))


async def test_deleting_a_user_ends_their_grants(cluster_app_factory: AppFactory) -> None:
    async with cluster_app_factory() as http:
        client, rs = await new_client(http), await new_client(http, name="rs", introspection="all")
        await new_user(http)
        grants = [issued(await password_token(http, client)) for _ in range(5)]
        assert (await http.delete("/admin/users/alice", headers=ADMIN)).status_code == 204
        for doc in grants:
            assert not await active(http, rs, doc["access_token"])
            assert not await active(http, rs, doc["refresh_token"])


async def test_admin_listing_reads_clients_across_slots(cluster_app_factory: AppFactory) -> None:
    async with cluster_app_factory() as http:
        made = [await new_client(http, name=f"client {i:02}") for i in range(12)]
        listed = (await http.get("/admin/clients", headers=ADMIN)).json()
        assert listed["total"] == 12
        assert {c["client_id"] for c in listed["clients"]} == {c["client_id"] for c in made}
        console = await sign_in(http)
        page = await console.get("/admin")  # the console's browse_clients
        assert page.status_code == 200, page.text
        assert '<span class="count">12</span>' in page.text
        assert sorted(table_ids(page.text)) == sorted(c["client_id"] for c in made)


async def test_dpop_proofs_are_claimed_once_across_instances_and_bound_rotation_holds(
        cluster_app_factory: AppFactory) -> None:
    """On a cluster the once-only claim goes through the cluster client (no pipelined one): a
    proof accepted by one instance is refused by another, and rotate.lua binds a public
    client's rotated refresh token to the key in the grant's own slot."""
    key = DPoPKey()
    async with cluster_app_factory() as one, cluster_app_factory() as other:
        client = await new_client(one)
        app = await new_client(one, name="app", token_endpoint_auth_method="none",
                               grant_types=["password", "refresh_token"])
        rs = await new_client(one, name="rs", introspection="all")
        await new_user(one)
        proof = key.proof("POST", f"{ISSUER}/oauth/token")
        cc = {"grant_type": "client_credentials"}
        bound = issued(await one.post("/oauth/token", data=cc, auth=auth(client),
                                      headers={"DPoP": proof}))
        assert bound["token_type"] == "DPoP"
        replayed = await other.post("/oauth/token", data=cc, auth=auth(client),
                                    headers={"DPoP": proof})
        assert replayed.status_code == 400, replayed.text
        assert replayed.json()["error"] == "invalid_dpop_proof"
        first = issued(await other.post(
            "/oauth/token", data={"grant_type": "password", "username": "alice",
                                  "password": "correct horse", "client_id": app["client_id"]},
            headers={"DPoP": key.proof("POST", f"{ISSUER}/oauth/token")}))
        again = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"],
                 "client_id": app["client_id"]}
        stolen = await one.post("/oauth/token", data=again,
                                headers={"DPoP": DPoPKey().proof("POST", f"{ISSUER}/oauth/token")})
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
        rotated = issued(await one.post("/oauth/token", data=again, headers={
            "DPoP": key.proof("POST", f"{ISSUER}/oauth/token")}))
        for token in (bound["access_token"], rotated["access_token"], rotated["refresh_token"]):
            doc = (await one.post("/oauth/introspect", data={"token": token}, auth=auth(rs))).json()
            assert doc["active"] is True and doc["cnf"] == {"jkt": key.jkt}



async def test_token_writes_wait_for_a_replica(cluster_app_factory: AppFactory,
                                               caplog: pytest.LogCaptureFixture) -> None:
    async with cluster_app_factory(redis_wait_replicas=1) as http:
        client, rs = await new_client(http), await new_client(http, name="rs", introspection="all")
        await new_user(http)
        pw = issued(await password_token(http, client))
        rotated = issued(await refresh(http, client, pw["refresh_token"]))
        await revoke(http, client, rotated["access_token"], "access_token")
        assert not await active(http, rs, rotated["access_token"])
        assert await active(http, rs, rotated["refresh_token"])
        assert "replicas in" not in caplog.text  # every write reached its replica in time


# Last in the file: it changes the cluster's topology (a replica becomes a master).
async def test_failover_keeps_every_token_and_the_service(
        cluster_app_factory: AppFactory, redis_cluster: RedisClusterNodes) -> None:
    async with cluster_app_factory(redis_wait_replicas=1) as http:
        client, rs = await new_client(http), await new_client(http, name="rs", introspection="all")
        tokens = [issued(await cc_token(http, client))["access_token"] for _ in range(50)]
        victim = redis_cluster.master_of(token_key(tokens[0]))
        started = time.monotonic()
        redis_cluster.kill(victim)
        # Traffic goes on while the cluster notices: 503 meanwhile is fine, then 200 again.
        statuses: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            resp = await http.post("/oauth/introspect", data={"token": tokens[0]}, auth=auth(rs))
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                break
            assert resp.status_code == 503, resp.text
            await asyncio.sleep(0.2)
        assert statuses[-1] == 200, statuses
        recovered = time.monotonic() - started
        redis_cluster.wait_ok(redis_cluster.live_ports(), 15)
        assert victim not in redis_cluster.masters()
        # Every token written before the failover (with WAIT) is still there.
        for token in tokens:
            assert await active(http, rs, token), token
        # And writes go on, without a restart.
        issued(await cc_token(http, client))
        print(f"failover: service answered again after {recovered:.1f} s, "
              f"{statuses.count(503)} answers 503 meanwhile")

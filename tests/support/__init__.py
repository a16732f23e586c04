"""What the tests share, so that each assertion and each way of starting a process exists once.

- `config`: the test deployment's keys and settings, for in-process apps and `serve` alike.
- `redis_servers`: redis-server processes: plain, with deploy/redis.conf (AOF), or a cluster.
- `apps`: apps driven in-process (`running_app`, `AppFactory`), on one Redis or the cluster.
- `service`: real `tokensvc serve` processes.
- `api`: requests through the service's API (clients, users, tokens, introspection).
- `assertions`: what every error and every token response must look like.
- `stored`: what the service keeps in Redis, seen from outside (token keys, expiry, snapshots).
- `authflow`: a browser's walk through the authorization pages, and PKCE.
- `console`: a signed-in session of the admin console.
- `load`: many concurrent requests from several OS processes.
- `metrics`: reading a Prometheus scrape.
- `tools`: skipping (or, in CI, failing) when an outside tool is missing.
"""

"""Persistence: Redis key layout, Lua scripts and the embedded redis-server."""

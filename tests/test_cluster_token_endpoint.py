"""tests/test_token_endpoint.py a second time, on the real local Redis Cluster (3 masters, 3 replicas)."""

from __future__ import annotations

import pytest

from tests.test_token_endpoint import *  # noqa: F403  (its tests and its own fixtures)

# After the star import, so these cluster fixtures replace conftest's single-node ones.
from tests.cluster_suite import app_factory, http, redis_db, suite_cluster  # isort: skip

__all__ = ["app_factory", "http", "redis_db", "suite_cluster"]  # fixtures for the tests above

pytestmark = pytest.mark.slow

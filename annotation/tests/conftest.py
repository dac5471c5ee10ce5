import pytest
from django.core.cache import cache
from django.db import connection

from annotation.services import assignment


@pytest.fixture(params=["single statement", "orm"])
def both_write_paths(request, monkeypatch):
    """Run a test on both ways the engine writes claims and votes: one SQL statement each (PostgreSQL) and the ORM
    (every other database, e.g. the demo's SQLite), so the two cannot drift apart."""
    if request.param == "orm":
        monkeypatch.setattr(assignment, "single_statement_writes", lambda: False)
    elif connection.vendor != "postgresql":
        pytest.skip("the single-statement writes are PostgreSQL's")
    return request.param


@pytest.fixture
def fresh_rate_limits():
    """Rate limits counted from zero, and forgotten after (they live in the cache)."""
    cache.clear()
    yield
    cache.clear()

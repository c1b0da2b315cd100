from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import harness
from tests.support.broker import Mosquitto
from tests.support.postgres import Postgres, running_postgres

# CI explores the same examples every run (a red CI must be a real regression, reproducible as is);
# TELGATE_HYPOTHESIS=explore draws new ones, with more of them, for a session spent hunting.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("explore", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile("explore" if os.environ.get("TELGATE_HYPOTHESIS") == "explore" else "ci")

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is required for integration tests: apt-get install mosquitto (bash .ci/run does)")
    m = Mosquitto(tmp_path / "mosquitto")
    m.start()
    yield m
    m.stop()


# -- both stores ------------------------------------------------------------------------------------------
# A module or test marked `both_stores` runs on SQLite and again on PostgreSQL: every gateway it starts
# (harness.settings_for, or a configuration file with harness.store_toml()) gets a database of its own
# on one server for the whole session, started on first use.


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.get_closest_marker("both_stores") is not None:
        metafunc.fixturenames.append("store_kind")
        metafunc.parametrize("store_kind", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(scope="session")
def session_postgres() -> Iterator[Postgres]:
    with running_postgres() as server:
        yield server


_databases = iter(range(1_000_000))


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    kind: str = request.param
    if kind == "postgres":
        server: Postgres = request.getfixturevalue("session_postgres")
        harness.STORE_URL = server.create_database(f"e2e{next(_databases)}")
    try:
        yield kind
    finally:
        harness.STORE_URL = None

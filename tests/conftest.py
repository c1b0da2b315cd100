from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.broker import Mosquitto

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

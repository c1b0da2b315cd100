from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Mosquitto

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is required for integration tests: apt-get install mosquitto (bash .ci/run does)")
    m = Mosquitto(tmp_path / "mosquitto")
    m.start()
    yield m
    m.stop()

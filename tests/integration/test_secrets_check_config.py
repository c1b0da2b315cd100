"""`telgate check-config` and secrets (issue 21, SPEC §1/§2): passwords inside URLs are masked in what it
prints, and an empty secret is a configuration error (exit 2) naming the key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.test_service import telgate

pytestmark = pytest.mark.integration

WA = '[whatsapp]\nphone_number_id = "1055"\naccess_token = "EAAG-t"\nverify_token = "v"\n'


def test_check_config_masks_passwords_inside_urls(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text(
        '[store]\nurl = "postgresql://telgate:S3cret@db/telgate?sslpassword=KeyPw"\n'
        '[bus]\nurl = "mqtts://gw:BusPw@broker:8883"\n'
        '[influx]\nurl = "http://writer:InfluxPw@influx:8086"\n'
        f'{WA}app_secret = "AppS3cret"\napi_base = "https://proxy:ProxyPw@graph.example"\n'
    )
    out = telgate("check-config", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    for secret in ("S3cret", "KeyPw", "BusPw", "InfluxPw", "ProxyPw", "EAAG-t", "AppS3cret"):
        assert secret not in out.stdout, secret
    shown = json.loads(out.stdout)
    assert shown["store"]["url"] == "postgresql://telgate:***@db/telgate?sslpassword=***"
    assert shown["bus"]["url"] == "mqtts://gw:***@broker:8883"
    assert shown["influx"]["url"] == "http://writer:***@influx:8086"
    assert shown["whatsapp"]["api_base"] == "https://proxy:***@graph.example"
    assert shown["whatsapp"]["app_secret"] == "********"


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        (f'{WA}app_secret = ""\n', "whatsapp.app_secret"),
        (f'{WA}app_secret_file = "{{empty}}"\n', "whatsapp.app_secret_file"),
        (WA, "whatsapp.app_secret"),  # required with phone_number_id
        ('[bus]\npassword = ""\n', "bus.password"),
        ('[http]\napi_token_file = "{empty}"\n', "http.api_token_file"),
    ],
)
def test_an_empty_secret_stops_check_config_and_run_naming_the_key(tmp_path: Path, toml: str, key: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cfg = tmp_path / "t.toml"
    cfg.write_text(toml.replace("{empty}", str(empty)))
    for command in ("check-config", "run"):
        out = telgate(command, "--config", str(cfg))
        assert out.returncode == 2 and key in out.stderr, (command, out.returncode, out.stderr)
        assert "Traceback" not in out.stderr and "AssertionError" not in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr

"""Secrets in the configuration (issue 21): credentials inside URLs are masked wherever the settings are
printed, an empty secret is refused naming its key, and no assert stands between a missing secret and
the code that needs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import ConfigError, load_settings, mask_url

WA = {"phone_number_id": "1055", "access_token": "EAAG-t", "app_secret": "s3cret", "verify_token": "v"}


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://telgate:S3cret@db/telgate", "postgresql://telgate:***@db/telgate"),
        ("postgresql://telgate@db/telgate", "postgresql://telgate@db/telgate"),  # no password: as it is
        ("mqtts://gw:p%40ss@broker:8883", "mqtts://gw:***@broker:8883"),
        ("mqtt://:only-a-password@broker", "mqtt://:***@broker"),
        ("postgresql://u:pa/ss@db/x", "postgresql://u:***@db/x"),  # a "/" in it, not percent-encoded
        (
            "postgresql://db/t?user=a&password=zz&sslmode=require",
            "postgresql://db/t?user=a&password=***&sslmode=require",
        ),
        ("http://influx:8086/?u=admin&p=hunter2", "http://influx:8086/?u=admin&p=***"),
        ("https://u:tok@graph.example/v1?access_token=EAAG#x", "https://u:***@graph.example/v1?access_token=***#x"),
        ("https://graph.facebook.com", "https://graph.facebook.com"),
        ("sqlite:///{data_dir}/telgate.db", "sqlite:///{data_dir}/telgate.db"),
        ("127.0.0.1:8080", "127.0.0.1:8080"),
    ],
)
def test_credentials_inside_urls_are_masked(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@given(
    scheme=st.sampled_from(["postgresql", "mqtt", "mqtts", "http", "https"]),
    user=st.text(st.characters(codec="ascii", exclude_characters=":@/?#"), max_size=8),
    password=st.text(st.characters(codec="ascii", exclude_characters="@?#"), min_size=1, max_size=16),
    rest=st.sampled_from(["db/telgate", "broker:1883", "h:8086/x?y=1", ""]),
)
def test_no_password_survives_masking(scheme: str, user: str, password: str, rest: str) -> None:
    password = "Pw" + password  # recognisable in the output
    shown = mask_url(f"{scheme}://{user}:{password}@{rest}")
    assert password not in shown and shown.startswith(f"{scheme}://{user}:***@")


def test_masked_settings_hide_every_url_password() -> None:
    s = load_settings(
        None,
        store={"url": "postgresql://telgate:S3cret@db/telgate"},
        bus={"url": "mqtts://gw:BusPw@broker:8883", "password": "hunter2"},
        influx={"url": "http://writer:InfluxPw@influx:8086"},
        whatsapp={**WA, "api_base": "https://proxy:ProxyPw@graph.example"},
    )
    shown = s.masked()
    text = json.dumps(shown)
    for secret in ("S3cret", "BusPw", "hunter2", "InfluxPw", "ProxyPw", "EAAG-t", "s3cret"):
        assert secret not in text, secret
    assert shown["store"]["url"] == "postgresql://telgate:***@db/telgate"
    assert shown["bus"]["url"] == "mqtts://gw:***@broker:8883" and shown["bus"]["password"] == "********"
    assert s.store.url == "postgresql://telgate:S3cret@db/telgate", "masked for printing only"


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"whatsapp": {**WA, "app_secret": ""}}, "whatsapp.app_secret"),
        ({"whatsapp": {**WA, "access_token": "  "}}, "whatsapp.access_token"),
        ({"whatsapp": {k: v for k, v in WA.items() if k != "verify_token"}}, "whatsapp.verify_token"),
        ({"bus": {"password": ""}}, "bus.password"),  # optional, but given empty: a mistake
        ({"sip": {"password": ""}}, "sip.password"),
        ({"http": {"api_token": ""}}, "http.api_token"),  # left out = no token; empty = a token lost on the way
        ({"influx": {"token": ""}}, "influx.token"),
        ({"influx": {"password": "\n"}}, "influx.password"),
        ({"bus": {"password_file": ""}}, "bus.password_file"),
    ],
)
def test_an_empty_secret_is_refused_naming_its_key(sections: dict[str, dict[str, str]], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, **sections)
    assert info.value.key == key, str(info.value)


def test_an_empty_secret_file_is_refused_naming_the_file_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty, newline, unreadable = tmp_path / "empty", tmp_path / "newline", tmp_path / "absent"
    empty.write_text("")
    newline.write_text("\n")
    for path in (empty, newline):
        with pytest.raises(ConfigError) as info:
            load_settings(None, whatsapp={**WA, "app_secret": None, "app_secret_file": str(path)})
        assert info.value.key == "whatsapp.app_secret_file" and "empty" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_settings(None, bus={"password_file": str(unreadable)})
    assert info.value.key == "bus.password_file" and "cannot read" in str(info.value)
    monkeypatch.setenv("TELGATE_WHATSAPP__APP_SECRET", "")
    with pytest.raises(ConfigError) as info:
        load_settings(None, whatsapp={k: v for k, v in WA.items() if k != "app_secret"})
    assert info.value.key == "whatsapp.app_secret"


def test_a_secret_given_is_kept_as_given(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(" with spaces \n")
    s = load_settings(None, whatsapp={**WA, "app_secret": None, "app_secret_file": str(secret)})
    assert s.whatsapp.app_secret is not None and s.whatsapp.app_secret.get_secret_value() == " with spaces "


def test_no_assert_guards_a_secret() -> None:
    """The code that needs a secret refuses its absence with an error naming the key, also under -O."""
    root = Path(__file__).resolve().parents[2]
    words = ("password", "secret", "access_token", "verify_token", "api_token")
    for package in ("gateway", "whatsapp", "sip", "metrics"):
        for path in (root / package).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                code = line.strip()
                if code.startswith("assert ") and any(w in code.split("#")[0].lower() for w in words):
                    pytest.fail(f"{path.relative_to(root)}:{number}: {code}")

"""Who may read what over HTTP (issue 13): behind a load balancer the public listener serves the WhatsApp
webhook and /healthz only; /readyz, /metrics and the contact read API (phone numbers, event history) go
behind `http.api_token` or onto `http.admin_listen`. The webhook path is checked with the Cloud API
stand-in posting real signed webhooks, and its wire ledger compared with the events."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from gateway.config import ConfigError, load_settings
from tests.support.broker import Mosquitto
from tests.support.harness import backend
from tests.support.wa import send, wa_ledger, wa_rig

pytestmark = pytest.mark.integration
TOKEN = "admin-token-for-tests-0123456789"


async def get(port: int | None, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r:
        return r.status, await r.text()


ADMIN = ("/readyz", "/metrics", "/v1/campaigns/wa/contacts/k1")


async def test_api_token_guards_the_admin_endpoints_and_leaves_the_webhook_alone(
    broker: Mosquitto, tmp_path: Path
) -> None:
    sections = {"http": {"api_token": TOKEN}}
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path, sections=sections) as (app, standin):
        await b.send("send", send("a1", "k1", "420601000050"))
        # the stand-in's signed webhooks carry no bearer token, and the contact goes all the way
        await b.wait_for(lambda: b.statuses("wa", "k1")[-1:] == ["read"], timeout=20)
        seen = await wa_ledger(b, standin)
        assert seen.compared == 1 and seen.wire == seen.attempts == 1
        port = app.http_port
        assert app.admin_port == port, "one listener"
        for path in ADMIN:
            status, _ = await get(port, path)
            assert status == 401, f"{path} without a token"
            status, _ = await get(port, path, "wrong-token")
            assert status == 401, f"{path} with a wrong token"
            status, _ = await get(port, path, TOKEN[:-1])
            assert status == 401, f"{path} with a prefix of the token"
        status, body = await get(port, "/metrics", TOKEN)
        assert status == 200 and "telgate_contacts" in body
        status, body = await get(port, "/v1/campaigns/wa/contacts/k1", TOKEN)
        assert status == 200 and '"status": "read"' in body
        assert (await get(port, "/readyz", TOKEN))[0] == 200
        assert (await get(port, "/healthz"))[0] == 200, "liveness stays open for the load balancer"


async def test_admin_listener_takes_the_admin_endpoints_off_the_public_one(broker: Mosquitto, tmp_path: Path) -> None:
    sections = {"http": {"listen": "127.0.0.1:0", "admin_listen": "127.0.0.1:0"}}
    async with backend(broker.url) as b, wa_rig(broker.url, tmp_path, sections=sections) as (app, standin):
        await b.send("send", send("a1", "k1", "420601000051"))
        await b.wait_for(lambda: b.statuses("wa", "k1")[-1:] == ["read"], timeout=20)  # webhooks on the public
        seen = await wa_ledger(b, standin)
        assert seen.compared == 1 and seen.wire == seen.attempts == 1
        public, admin = app.http_port, app.admin_port
        assert public is not None and admin is not None and public != admin
        for path in ADMIN:
            assert (await get(public, path))[0] == 404, f"{path} is not served on the public listener"
            assert (await get(admin, path))[0] == 200, f"{path} on the admin listener"
        assert (await get(public, "/healthz"))[0] == 200
        status, body = await get(admin, "/v1/campaigns/wa/contacts/k1")
        assert status == 200 and "420601000051" in body, "the contact API (and its phone numbers) is there"
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"http://127.0.0.1:{admin}/webhooks/whatsapp", data=b"{}") as r,
        ):
            assert r.status in (404, 405), "the webhook is not served on the admin listener"


def test_api_token_from_a_file_and_a_bad_admin_listen_named(tmp_path: Path) -> None:
    secret = tmp_path / "api-token"
    secret.write_text(TOKEN + "\n")
    settings = load_settings(None, http={"api_token_file": str(secret)})
    assert settings.http.api_token is not None and settings.http.api_token.get_secret_value() == TOKEN
    assert TOKEN not in repr(settings.http), "masked when printed"
    with pytest.raises(ConfigError) as err:
        load_settings(None, http={"admin_listen": "nowhere"})
    assert err.value.key == "http.admin_listen"

"""deploy/: the compose file validates (two instances on one PostgreSQL, each with its own id and ports),
the systemd units verify (the single one and the template for several instances on one host), the example
configuration loads (and with a template instance's environment file on top of it), the Prometheus
configuration scrapes every instance, and the shipped Mosquitto configuration refuses anonymous clients and
lets telgate in with its password.

No input stops the gateway (issue 21), deploy/'s part: the compose stack publishes only the webhook listener
beyond the host's loopback, its admin endpoints need the bearer token Prometheus scrapes with, and no
password is written in deploy/; deploy/init-secrets.sh makes every secret the stack reads; the broker it
configures takes TLS clients that trust the generated CA with the generated passwords, and its ACL keeps each
tenant's backend to its own topic prefix (a real Mosquitto and a real gateway over TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from metrics.influx import Point, encode
from tests.support.broker import Mosquitto, free_port, shipped_broker
from tests.support.harness import backend, gateway, settings_for
from tests.support.postgres import Postgres
from tests.support.tsdb import InfluxDB, Prometheus
from tools.gen_dashboards import PROMETHEUS, queries

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
INIT = DEPLOY / "init-secrets.sh"


def _compose() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise AssertionError("neither `docker compose` nor docker-compose is installed (bash .ci/run installs it)")


def _compose_config(compose: Path = DEPLOY / "compose.yaml") -> subprocess.CompletedProcess[str]:
    """`docker compose config` with the stack's defaults (the bind variables unset)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TELGATE_MQTT_BIND", "TELGATE_SIP_BIND")}
    return subprocess.run([*_compose(), "-f", str(compose), "config"], capture_output=True, text=True, env=env)


def test_compose_file_validates(tmp_path: Path) -> None:
    out = _compose_config()
    assert out.returncode == 0, out.stderr
    for service in ("telgate-1", "telgate-2", "postgres", "mosquitto", "prometheus", "influxdb", "grafana"):
        assert f"  {service}:" in out.stdout
    assert "/etc/grafana/provisioning" in out.stdout and "/var/lib/grafana/dashboards" in out.stdout
    services = yaml.safe_load(out.stdout)["services"]
    instances = [services["telgate-1"], services["telgate-2"]]
    env = [s["environment"] for s in instances]
    # each its own gateway.id (and so its own MQTT client id telgate-{id}), data volume, HTTP and SIP ports
    assert len({e["TELGATE_GATEWAY__ID"] for e in env}) == 2
    assert len({e["TELGATE_SIP__LOCAL"] for e in env}) == 2
    assert not any("TELGATE_BUS__CLIENT_ID" in e for e in env)
    published = [{str(p.get("published") if isinstance(p, dict) else p) for p in s["ports"]} for s in instances]
    assert not published[0] & published[1], published
    assert len({str(s["volumes"]) for s in instances}) == 2
    # one shared store: PostgreSQL, the password not in the URL but in a password file made from a secret
    for e in env:
        url = e["TELGATE_STORE__URL"]
        assert url.startswith("postgresql://telgate@postgres:5432/") and ":" not in url.split("//")[1].split("@")[0]
        assert e["PGPASSFILE"] and "PGPASSWORD" not in e
    for s in instances:
        assert s["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "postgres-password" in str(s["secrets"]) and "/run/secrets/postgres-password" in str(s["entrypoint"])
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:") and "pg_isready" in str(postgres["healthcheck"]["test"])
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert "POSTGRES_PASSWORD" not in postgres["environment"]
    assert "/var/lib/postgresql/data" in str(postgres["volumes"])


def test_compose_entrypoint_writes_a_password_file_libpq_accepts(tmp_path: Path) -> None:
    """The telgate services' entrypoint turns the secret into a password file (mode 0600, `:` and `\\`
    escaped as libpq's format wants) and then runs telgate with the command's arguments."""
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    entrypoint = services["telgate-1"]["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"]
    secret = tmp_path / "postgres-password"
    secret.write_text("pa:ss\\word\n")
    script = (
        entrypoint[2]
        .replace("$$", "$")
        .replace("/run/secrets/postgres-password", str(secret))
        .replace("/tmp/pgpass", str(tmp_path / "pgpass"))
        .replace("exec telgate", "exec echo")
    )
    out = subprocess.run(["sh", "-c", script, *entrypoint[3:], "run"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "run\n", out.stderr
    pgpass = tmp_path / "pgpass"
    assert pgpass.read_text() == "*:*:*:*:pa\\:ss\\\\word\n"
    assert pgpass.stat().st_mode & 0o077 == 0


def test_prometheus_scrapes_every_instance(tmp_path: Path) -> None:
    """Every instance's admin listener (http.admin_listen, 9100 in the stack), with the bearer token of
    http.api_token_file from the compose secret Prometheus is given."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["telgate-1:9100", "telgate-2:9100"]
    services = yaml.safe_load(_compose_config().stdout)["services"]
    for name in ("telgate-1", "telgate-2"):
        assert services[name]["environment"]["TELGATE_HTTP__ADMIN_LISTEN"].endswith(":9100")
    (job,) = config["scrape_configs"]
    token = services["telgate-1"]["environment"]["TELGATE_HTTP__API_TOKEN_FILE"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": token}
    assert token == "/run/secrets/telgate-api-token" and "telgate-api-token" in str(services["prometheus"]["secrets"])
    tool = shutil.which("promtool")
    assert tool, "promtool is not installed (apt-get install prometheus; bash .ci/run does)"
    config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yml")]
    (tmp_path / "token").write_text("t0ken")  # promtool checks that the credentials file exists
    job["authorization"]["credentials_file"] = str(tmp_path / "token")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run([tool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on this machine (the issue asks for it where available)")
    telgate = Path(sys.executable).with_name("telgate")
    unit = tmp_path / "telgate.service"
    text = (DEPLOY / "telgate.service").read_text()
    assert "DynamicUser=yes" in text and "ProtectSystem=strict" in text and "StateDirectory=telgate" in text
    unit.write_text(text.replace("/opt/telgate/bin/telgate", str(telgate)))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert out.returncode == 0 and "telgate.service" not in out.stderr, out.stderr


def test_systemd_template_unit_verifies(tmp_path: Path) -> None:
    """telgate@.service: instances telgate@1, telgate@2 with their own id, data dir and ports; restarted
    after any exit (75: the lease was lost) but a configuration error (2); hardened as telgate.service."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not on this machine (the issue asks for it where available)")
    text = (DEPLOY / "telgate@.service").read_text()
    single = (DEPLOY / "telgate.service").read_text()
    hardening = single[single.index("# sandboxing") :].splitlines()[1:]
    hardening = [line for line in hardening if line and not line.startswith(("#", "["))]
    hardening = hardening[: hardening.index("AmbientCapabilities=") + 1]
    assert len(hardening) > 15 and all(line in text.splitlines() for line in hardening)
    for line in (
        "DynamicUser=yes",
        "Restart=always",
        "RestartPreventExitStatus=2",
        "EnvironmentFile=/etc/telgate/%i.env",
        "Environment=TELGATE_GATEWAY__ID=%H-%i",
        "StateDirectory=telgate/%i",
        "Environment=TELGATE_GATEWAY__DATA_DIR=/var/lib/telgate/%i",
        "Environment=PGPASSFILE=%d/pgpass",
    ):
        assert line in text.splitlines(), line
    telgate = Path(sys.executable).with_name("telgate")
    (tmp_path / "telgate@.service").write_text(text.replace("/opt/telgate/bin/telgate", str(telgate)))
    for instance in ("telgate@1.service", "telgate@2.service"):
        out = subprocess.run([analyze, "verify", str(tmp_path / instance)], capture_output=True, text=True)
        assert out.returncode == 0 and "telgate@" not in out.stderr, out.stderr


def _example_config(tmp_path: Path) -> Path:
    """deploy/telgate.example.toml with its secret files in `tmp_path` (each holds s3cr3t-value)."""
    text = (DEPLOY / "telgate.example.toml").read_text()
    for name in ("bus-password", "sip-password"):
        (tmp_path / name).write_text("s3cr3t-value\n")
        text = text.replace(f"/etc/telgate/{name}", str(tmp_path / name))
    config = tmp_path / "telgate.toml"
    config.write_text(text)
    return config


def test_template_instances_get_their_own_id_and_ports(tmp_path: Path) -> None:
    """The shared example configuration with each instance's environment file on top, as systemd gives it:
    distinct ids, HTTP and SIP ports; the store a PostgreSQL URL without a password."""
    config = _example_config(tmp_path)
    example = (DEPLOY / "telgate@.example.env").read_text()
    telgate = Path(sys.executable).with_name("telgate")
    seen = []
    for n, (http, sip) in enumerate((("127.0.0.1:8081", "0.0.0.0:5070"), ("127.0.0.1:8082", "0.0.0.0:5072")), 1):
        env_file = example.replace("127.0.0.1:8081", http).replace("0.0.0.0:5070", sip)
        lines = [line.split("=", 1) for line in env_file.splitlines() if line and not line.startswith("#")]
        env = {
            "PATH": "/usr/bin:/bin",
            "TELGATE_GATEWAY__ID": f"host-{n}",  # the unit's Environment=TELGATE_GATEWAY__ID=%H-%i
            "TELGATE_GATEWAY__DATA_DIR": f"/var/lib/telgate/{n}",
            "TELGATE_STORE__URL": "postgresql://telgate@db:5432/telgate",
            **dict(lines),
        }
        out = subprocess.run(
            [str(telgate), "check-config", "--config", str(config)], capture_output=True, text=True, env=env
        )
        assert out.returncode == 0, out.stderr
        seen.append(out.stdout)
    a, b = (json.loads(s) for s in seen)
    assert a["gateway"]["id"] != b["gateway"]["id"]
    assert a["http"]["listen"] == "127.0.0.1:8081" and b["http"]["listen"] == "127.0.0.1:8082"
    assert a["sip"]["local"] == "0.0.0.0:5070" and b["sip"]["local"] == "0.0.0.0:5072"
    assert a["store"]["url"] == b["store"]["url"] and a["bus"]["client_id"] == "telgate-{id}"


def test_example_configuration_loads(tmp_path: Path) -> None:
    config = _example_config(tmp_path)
    telgate = Path(sys.executable).with_name("telgate")
    out = subprocess.run([str(telgate), "check-config", "--config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "s3cr3t-value" not in out.stdout and "10.0.0.5:5060" in out.stdout


async def test_shipped_mosquitto_configuration_requires_a_password(tmp_path: Path) -> None:
    broker = shipped_broker(tmp_path)
    broker.start()
    try:
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", broker.port, identifier="anonymous"):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with aiomqtt.Client("127.0.0.1", broker.port, username="telgate", password="wrong"):
                pass
        settings = settings_for(
            f"mqtt://127.0.0.1:{broker.port}",
            tmp_path,
            bus={"username": "telgate", "password": broker.passwords["telgate"]},
        )
        async with gateway(settings) as app:
            assert app.bus.connected.is_set()
    finally:
        broker.stop()


def _member(cfg: Path, n: int, http_port: int, log: Path, gateway_id: str | None = None) -> subprocess.Popen[bytes]:
    """`telgate run` as telgate@<n>.service starts it: the shared configuration, this instance's id, data dir
    and HTTP port from its environment."""
    env = {
        **os.environ,
        "TELGATE_GATEWAY__ID": gateway_id or f"gw{n}",
        "TELGATE_GATEWAY__DATA_DIR": str(cfg.parent / f"gw{n}"),
        "TELGATE_HTTP__LISTEN": f"127.0.0.1:{http_port}",
    }
    telgate = Path(sys.executable).with_name("telgate")
    return subprocess.Popen(
        [str(telgate), "run", "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=log.open("ab"), env=env
    )


async def test_cluster_alerts_and_panels_against_three_members(
    broker: Mosquitto, session_postgres: Postgres, tmp_path: Path
) -> None:
    """Three `telgate run` processes on one PostgreSQL, Prometheus scraping two of them with the shipped rules:
    every panel of the dashboards' Cluster row has data; the member Prometheus does not scrape shows as
    unheld partitions and an unscraped member; a member frozen past its lease is buried by another (a
    takeover, the target down, the cluster shrunk) and exits 75 when it wakes up; a second process with a
    running member's gateway.id exits 2. The exit codes are what telgate@.service's Restart= rests on."""
    lease_s = 2
    url = await asyncio.to_thread(session_postgres.create_database, "deploy_cluster")
    cfg = tmp_path / "telgate.toml"
    cfg.write_text(
        f'[gateway]\nlease_s = {lease_s}\ndrain_timeout_s = 2\n[store]\nurl = "{url}"\n[bus]\nurl = "{broker.url}"\n'
    )
    ports = [free_port() for _ in range(4)]
    logs = [tmp_path / f"gw{n}.log" for n in (1, 2, 3, 4)]
    procs = [_member(cfg, n, ports[n - 1], logs[n - 1]) for n in (1, 2, 3)]
    rules = yaml.safe_load(RULES.read_text())["groups"]
    cluster_rules = {r["alert"]: r["expr"] for g in rules if g["name"] == "telgate-cluster" for r in g["rules"]}
    gateway_board = PROMETHEUS["Gateway"]
    row = gateway_board[gateway_board.index("Cluster") + 1 :]
    # WhatsApp is off here: its panel has data in test_observability, which evaluates every panel's query
    panels = [(p[0], q) for p in row if not isinstance(p, str) for q, _ in p[2] if "whatsapp" not in q]
    assert len(panels) >= 6
    try:
        targets = [f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}"]  # gw3 is not scraped
        with Prometheus(tmp_path / "prometheus", targets, [RULES]) as prom:
            async with backend(broker.url) as b:
                await b.wait_for(lambda: all(b.presence.get(f"gw{n}") == "online" for n in (1, 2, 3)), timeout=60)
                assert await prom.until('min(telgate_cluster_members{job="telgate"}) == 3', 30), "never scraped"
                # commands, which the share group spreads over the members
                for i in range(30):
                    await b.send("campaign", {"command_id": f"k{i}", "campaign_id": f"c{i}", "action": "create"})
                await b.wait_for(lambda: all(b.result(f"k{i}") for i in range(30)), timeout=30)
                assert {b.result(f"k{i}")["gateway_id"] for i in range(30)} >= {"gw1", "gw2"}  # type: ignore[index]
                # every panel of the Cluster row, and gw3's share missing from what Prometheus sees
                empty = [f"{title}: {q}" for title, q in panels if not await prom.until(q, 10)]
                assert not empty, "panels without data:\n" + "\n".join(empty)
                for alert in ("TelgateClusterPartitionsUnheld", "TelgateClusterMemberNotScraped"):
                    assert await prom.until(cluster_rules[alert], 10), alert
                # gw3 stops: it leaves, its partitions go to the two scraped members
                procs[2].send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(procs[2].wait, 30) == 0
                held = "sum(telgate_cluster_partitions) == 64 and max(telgate_cluster_members) == 2"
                assert await prom.until(held, 10 * lease_s), "gw3's partitions were not taken"
                assert not await asyncio.to_thread(prom.query, cluster_rules["TelgateClusterPartitionsUnheld"])
                # a second process with gw1's id: it waits 2 x lease_s for the lease to free, then exits 2
                twin = _member(cfg, 4, ports[3], logs[3], gateway_id="gw1")
                procs.append(twin)
                assert await asyncio.to_thread(twin.wait, 10 * lease_s) == 2
                assert "held by another running instance" in logs[3].read_text()
                # gw2 freezes past its lease: gw1 buries it (a takeover), Prometheus cannot scrape it
                procs[1].send_signal(signal.SIGSTOP)
                for alert in ("TelgateClusterMemberLost", "TelgateInstanceDown", "TelgateClusterShrunk"):
                    assert await prom.until(cluster_rules[alert], 10 * lease_s), alert
                assert procs[0].poll() is None
                # woken up, it finds its row gone: it stops on its own with EX_TEMPFAIL, for systemd to start again
                procs[1].send_signal(signal.SIGCONT)
                # (it hung in 4 runs of 10 before the bus honoured a cancellation aiomqtt's wait_for swallowed:
                # LeaseLost came while the bus reconnected, gw1 having just adopted gw2's MQTT session)
                code = await asyncio.to_thread(procs[1].wait, 30)
                assert code == 75, logs[1].read_text()[-2000:]
                assert "lease lost" in logs[1].read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(15)
            if p.poll() is None:
                p.kill()


def test_influxdb_dashboards_keep_the_instances_apart(tmp_path: Path) -> None:
    """Two instances write their own telgate_calls and telgate_whatsapp (tag `gateway`) to one InfluxDB, as
    the compose stack does: every InfluxDB panel has data, and a per-instance counter is one line per
    instance, not whichever instance wrote last."""
    calls = {"attempts": 0, "answered": 0, "rejected": 0, "unreachable": 0, "invalid_number": 0, "failed": 0}
    rates = {"active": 0, "asr": 0.5, "ner": 0.9, "acd_s": 30.0, "pdd_ms_p50": 800.0, "pdd_ms_p95": 1900.0}
    wa = {"sent": 0, "delivered": 0, "read": 0, "failed": 0, "delivery_rate": 0.9, "read_rate": 0.5}
    now = int(time.time() * 1000)
    lines = []
    for gw, attempts in (("gw-1", 10), ("gw-2", 4)):
        for i in range(3):  # a few points 1 s apart, the later instance writing last
            t = now - 3000 + i * 1000 + (300 if gw == "gw-2" else 0)
            points = [
                Point(
                    "telgate_contacts",
                    {"gateway": gw, "campaign": "spring", "channel": "voice", "status": "initial"},
                    {"count": 7},
                    t,
                ),
                Point(
                    "telgate_calls",
                    {"gateway": gw, "campaign": "spring"},
                    {**calls, "attempts": attempts + i, "answered": i, **rates},
                    t,
                ),
                Point("telgate_whatsapp", {"gateway": gw, "campaign": "spring"}, {**wa, "sent": attempts + i}, t),
                Point("telgate_gateway", {"gateway": gw}, {"bus_connected": 1, "outbox_pending": 0, "pbx_up": 1}, t),
            ]
            lines += [line for p in points if (line := encode(p)) is not None]
    with InfluxDB(tmp_path / "influx") as influx:
        req = urllib.request.Request(
            f"{influx.url}/write?db=telgate&precision=ms", data="\n".join(lines).encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 204

        def run(q: str) -> list[dict[str, Any]]:
            return influx.series(q.replace("$timeFilter", "time > now() - 15m").replace("$__interval", "1s"))

        empty = [f"{board} / {panel}" for board, panel, q in queries("influxdb") if not run(q)]
        assert not empty, empty
        for board, panel, q in queries("influxdb"):
            if "telgate_calls" in q or "telgate_whatsapp" in q:
                assert {s["tags"]["gateway"] for s in run(q)} == {"gw-1", "gw-2"}, (board, panel)
        (attempts_q,) = [q for _, panel, q in queries("influxdb") if panel == "Call attempts per campaign"]
        last = {s["tags"]["gateway"]: [v[1] for v in s["values"] if v[1] is not None][-1] for s in run(attempts_q)}
        assert last == {"gw-1": 12, "gw-2": 6}


# --- issue 21: what the stack exposes, and its secrets ---


def _port_binding(port: Any) -> tuple[str, str]:
    """(host address, container port) of a port in `docker compose config`'s output; "" = every interface."""
    if isinstance(port, dict):
        return str(port.get("host_ip") or ""), str(port["target"])
    parts = str(port).split("/")[0].split(":")
    return (parts[0] if len(parts) == 3 else ""), parts[-1]


def test_compose_publishes_only_the_webhook_beyond_loopback() -> None:
    """Every published port is bound to 127.0.0.1 but the telgate instances' public listener (8080 inside:
    /webhooks/whatsapp, /healthz); the admin endpoints sit on admin_listen behind api_token_file; telgate
    reaches the broker over TLS, which publishes no plaintext port."""
    services = yaml.safe_load(_compose_config().stdout)["services"]
    open_ports = []
    for name, service in services.items():
        for port in service.get("ports", []):
            host, target = _port_binding(port)
            if host != "127.0.0.1":
                open_ports.append((name, target))
    assert sorted(open_ports) == [("telgate-1", "8080"), ("telgate-2", "8080")], open_ports
    assert not any(_port_binding(p)[1] == "1883" for p in services["mosquitto"]["ports"])
    for name in ("telgate-1", "telgate-2"):
        env = services[name]["environment"]
        assert env["TELGATE_HTTP__ADMIN_LISTEN"] and env["TELGATE_HTTP__API_TOKEN_FILE"].startswith("/run/secrets/")
        assert env["TELGATE_BUS__URL"] == "mqtts://mosquitto:8883" and env["TELGATE_BUS__CA_FILE"]
        assert env["TELGATE_BUS__PASSWORD_FILE"] and env["TELGATE_INFLUX__PASSWORD_FILE"]
        assert not {k for k in env if re.search("PASSWORD|TOKEN|SECRET", k) and not k.endswith("_FILE")}
    influx = services["influxdb"]["environment"]
    assert influx["INFLUXDB_HTTP_AUTH_ENABLED"] == "true" and not any(k.endswith("PASSWORD") for k in influx)
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana-admin-password"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana
    # the plaintext listener of the shipped configuration is on the broker's own loopback
    listeners = [ln.split() for ln in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines()]
    assert [ln for ln in listeners if ln[:1] == ["listener"]] == [["listener", "1883", "127.0.0.1"]]


_SECRET_KEY = re.compile(r"(?i)[\w.-]*(password|passwd|token|secret)[\w.-]*\s*[:=]\s*(\S+)")
_FROM_A_FILE = re.compile(r"(?i)(_file\b|__file\b|\$__file\{|/run/secrets/|/etc/telgate/|\$\$\(cat |\"\$\$\(cat )")


def test_no_password_is_written_in_deploy() -> None:
    """No literal password, token or secret in deploy/ (what git holds there and what is about to be added):
    every `*password*`/`*token*`/`*secret*` key names a file, a secret or a variable, never a value; no
    `changeme`, no admin/admin. Not even for the tests: their brokers' passwords are made at test time
    (tests/support/broker.py: shipped_broker)."""
    files = [
        p
        for p in DEPLOY.rglob("*")
        if p.is_file() and "secrets" not in p.relative_to(DEPLOY).parts and p.suffix not in (".json",)
    ]
    assert len(files) > 15
    found = []
    for path in files:
        rel = path.relative_to(DEPLOY).as_posix()
        text = path.read_text()
        for n, line in enumerate(text.splitlines(), 1):
            if re.search(r"(?i)changeme|admin\s*/\s*admin|s3cret", line):
                found.append(f"{rel}:{n}: {line.strip()}")
            # configuration, not the script that makes the secrets (its values come from openssl rand)
            code = "" if line.lstrip().startswith("#") or rel == "init-secrets.sh" else line.split("#", 1)[0]
            for m in _SECRET_KEY.finditer(code):
                value = m.group(2).strip("\"',")
                if value and not _FROM_A_FILE.search(m.group(0)) and not value.startswith(("$", "/")):
                    found.append(f"{rel}:{n}: {line.strip()}")
    assert not found, "\n".join(found)
    # the dashboards are generated: no credentials in them either
    for path in (DEPLOY / "grafana" / "dashboards").rglob("*.json"):
        assert not re.search(r'(?i)"(password|token|secret)\w*"\s*:\s*"[^"$]', path.read_text()), path


def _init(deploy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["bash", str(deploy / "init-secrets.sh"), *args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out


def _copy_deploy(tmp_path: Path) -> Path:
    deploy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, deploy, ignore=shutil.ignore_patterns("secrets", "password"))
    return deploy


def test_init_secrets_makes_everything_the_stack_reads(tmp_path: Path) -> None:
    """deploy/init-secrets.sh in a copy of deploy/: every file the compose file reads from secrets/ exists
    and is not empty, the folder is the operator's alone, no secret is printed; telgate's configuration
    from the compose environment loads with them (check-config, the secrets masked); a second run keeps
    every password and still makes a valid password file."""
    deploy = _copy_deploy(tmp_path)
    out = _init(deploy)
    secrets = deploy / "secrets"
    values = {p.name: p.read_text() for p in secrets.iterdir() if p.name.endswith(("-password", "-token"))}
    assert len(values) >= 8 and all(re.fullmatch(r"[0-9a-f]{48}", v) for v in values.values()), values.keys()
    assert not any(v in out.stdout + out.stderr for v in values.values())
    assert secrets.stat().st_mode & 0o077 == 0 and (secrets / "mqtt-ca.key").stat().st_mode & 0o077 == 0
    config = _compose_config(deploy / "compose.yaml")
    assert config.returncode == 0, config.stderr
    stack = yaml.safe_load(config.stdout)
    referenced = {Path(s["file"]) for s in stack["secrets"].values()}
    for service in stack["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if "/secrets/" in source:
                referenced.add(Path(source))
    assert len(referenced) >= 11
    missing = [str(p) for p in referenced if not (p.is_file() and p.stat().st_size > 0)]
    assert not missing and all(p.parent == secrets for p in referenced), missing
    # the secrets every service names are ones the file declares
    for service in stack["services"].values():
        assert {s["source"] for s in service.get("secrets", [])} <= set(stack["secrets"])
    # telgate with the compose environment, the /run/secrets paths pointed at the generated files
    services = stack["services"]
    env = {
        "PATH": "/usr/bin:/bin",
        **{k: str(v).replace("/run/secrets", str(secrets)) for k, v in services["telgate-1"]["environment"].items()},
    }
    telgate = Path(sys.executable).with_name("telgate")
    checked = subprocess.run([str(telgate), "check-config"], capture_output=True, text=True, env=env)
    assert checked.returncode == 0, checked.stderr
    settings = json.loads(checked.stdout)
    assert settings["http"]["api_token"] == settings["bus"]["password"] == settings["influx"]["password"] == "********"
    assert not any(v in checked.stdout for v in values.values())
    # a second run: the passwords kept, the password file made again from them
    before = {p.name: p.read_bytes() for p in secrets.iterdir()}
    _init(deploy, "--mqtt-user", "acme")
    after = {p.name: p.read_bytes() for p in secrets.iterdir()}
    assert all(after[name] == data for name, data in before.items() if name != "mosquitto-passwd")
    users = [line.split(":")[0] for line in after["mosquitto-passwd"].decode().splitlines()]
    assert users == ["acme", "backend", "telgate"] and "mqtt-acme-password" in after
    assert all(line.split(":", 1)[1].startswith("$7$") for line in after["mosquitto-passwd"].decode().splitlines())


def _generated_broker(tmp_path: Path, secrets: Path) -> Mosquitto:
    """Mosquitto with the compose stack's configuration (mosquitto.conf, then tls.conf, the ACL) and the files
    init-secrets.sh made, on free ports of 127.0.0.1: `port` the plaintext listener, `tls_port` TLS."""
    broker = Mosquitto(tmp_path / "mq", port=free_port())
    broker.tls_port = free_port()
    work = broker.workdir
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text() + (DEPLOY / "mosquitto" / "tls.conf").read_text()
    conf = (
        text.replace("/mosquitto/config/passwd", str(secrets / "mosquitto-passwd"))
        .replace("/mosquitto/config/acl", str(DEPLOY / "mosquitto" / "acl"))
        .replace("/mosquitto/config/certs/", f"{secrets}/")
        .replace("/mosquitto/data/", f"{work}/")
        .replace("listener 1883 127.0.0.1", f"listener {broker.port} 127.0.0.1")
        .replace("listener 8883", f"listener {broker.tls_port} 127.0.0.1")
        .replace("log_dest stdout", f"log_dest file {work}/mq.log")
    )
    broker.conf.write_text(conf + f"user {getpass.getuser()}\n")
    return broker


async def test_generated_secrets_secure_the_broker_and_keep_tenants_apart(tmp_path: Path) -> None:
    """A real Mosquitto with the stack's configuration and init-secrets.sh's files: a TLS client that trusts
    the generated CA gets in with a generated password, one that does not trust it is refused at the
    handshake, a wrong password and no password are refused; a gateway connects over mqtts:// with bus.ca_file
    and bus.password_file as the compose stack gives them. Tenants (the ACL's %u patterns): tenant acme's
    gateway (user gw-acme, prefix tenant/acme) answers acme's command; globex can neither command acme's
    gateway nor read acme's events."""
    deploy = _copy_deploy(tmp_path)
    _init(deploy, "--mqtt-user", "acme", "--mqtt-user", "gw-acme", "--mqtt-user", "globex")
    secrets = deploy / "secrets"

    def password(user: str) -> str:
        return (secrets / f"mqtt-{user}-password").read_text()

    ca = str(secrets / "mqtt-ca.crt")
    trusted = ssl.create_default_context(cafile=ca)

    def client(user: str | None, secret: str | None = None, tls: ssl.SSLContext = trusted) -> aiomqtt.Client:
        """An MQTT 5 client of the TLS listener, by the name its certificate carries."""
        assert broker.tls_port is not None
        return aiomqtt.Client(
            "localhost",
            broker.tls_port,
            username=user,
            password=secret if secret is not None else (password(user) if user else None),
            identifier=f"{user or 'anonymous'}-{free_port()}",
            tls_context=tls,
            protocol=aiomqtt.ProtocolVersion.V5,
        )

    broker = _generated_broker(tmp_path, secrets)
    broker.start()
    try:
        url = f"mqtts://localhost:{broker.tls_port}"
        async with client("backend"):
            pass
        with pytest.raises(aiomqtt.MqttError):  # the system's CAs do not know the stack's own
            async with client("backend", tls=ssl.create_default_context()):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with client("backend", password("telgate")):
                pass
        with pytest.raises(aiomqtt.MqttError):
            async with client(None):
                pass
        # the stack's telgate: TLS, the CA and the password from files
        bus = {"username": "telgate", "password_file": str(secrets / "mqtt-telgate-password"), "ca_file": ca}
        stack = settings_for(url, tmp_path / "gw", bus=bus)
        async with gateway(stack) as app:
            assert app.bus.connected.is_set()
        # tenant acme: its gateways on tenant/acme as gw-acme; its backend acme; another tenant, globex
        prefix = "tenant/acme"
        bus = {"username": "gw-acme", "password": password("gw-acme"), "ca_file": ca, "topic_prefix": prefix}
        acme_gw = settings_for(url, tmp_path / "acme", bus=bus)
        async with gateway(acme_gw), client("acme") as acme, client("globex") as globex:
            await acme.subscribe(f"{prefix}/v1/evt/#", qos=1)
            await globex.subscribe(f"{prefix}/v1/evt/#", qos=1)
            await globex.subscribe("tenant/globex/v1/evt/#", qos=1)
            leaked: list[str] = []

            async def collect() -> None:
                async for message in globex.messages:
                    leaked.append(str(message.topic))

            spy = asyncio.create_task(collect())
            try:
                command = {"command_id": "g1", "campaign_id": "stolen", "action": "create"}
                await globex.publish(f"{prefix}/v1/cmd/campaign", json.dumps(command), qos=1)
                for n in (1, 2):
                    command = {"command_id": f"a{n}", "campaign_id": f"acme-{n}", "action": "create"}
                    await acme.publish(f"{prefix}/v1/cmd/campaign", json.dumps(command), qos=1)
                results: dict[str, Any] = {}

                async def read() -> None:
                    async for message in acme.messages:
                        if str(message.topic) == f"{prefix}/v1/evt/command":
                            body = json.loads(bytes(message.payload))  # type: ignore[arg-type]
                            results[body["command_id"]] = body
                            if {"a1", "a2"} <= results.keys():
                                return

                await asyncio.wait_for(read(), 20)
                assert results["a1"]["accepted"] and results["a2"]["accepted"]
                assert "g1" not in results  # globex's command never reached acme's gateway
                assert not leaked, leaked  # nor any of acme's events globex
            finally:
                spy.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await spy
    finally:
        broker.stop()

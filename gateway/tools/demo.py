"""`telgate demo`: the gateway on embedded defaults with a PBX simulator and the Cloud API stand-in,
one voice and one WhatsApp campaign submitted over the bus exactly as a backend would (bulk commands
through the command window of gateway/tools/submit.py), live progress, and the final figures. Some of the
customers who read the WhatsApp message answer it — a tap on the template's quick-reply button Confirm or
Decline, a question, a STOP — posted to the gateway's webhook as Meta would, in context of the message.

Everything runs on loopback in a temporary folder: SQLite, a local Mosquitto (the `mosquitto` binary
when it is installed; otherwise the embedded broker of the `demo` extra, amqtt, which speaks MQTT 3.1.1
— the gateway then runs its bus on 3.1.1), real SIP over UDP to `sip/pbxsim.py`, real HTTP to
`whatsapp/standin.py` with signed webhooks back to the gateway.

At its end the demo checks the wire ledger (SPEC §9): the INVITEs the PBX simulator received per number and
the send requests the stand-in received per contact must equal the attempts in the events it collected.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.bus.mqtt_io import Receiver
from gateway.channels.whatsapp import parse_callback
from gateway.config import Settings, load_settings
from gateway.contract.wire import MAX_BULK_CONTACTS, CommandResult
from gateway.domain.statuses import STATUSES, Channel, is_final
from gateway.logs import JsonFormatter
from gateway.service.app import App
from gateway.tools.submit import BusTarget, CommandWindow
from gateway.tools.watch import Tally
from metrics.recorder import CallKpi, WhatsAppKpi
from sip.pbxsim import PbxSimulator
from whatsapp.standin import Scenario, StandIn

log = logging.getLogger("telgate.demo")
FINAL_STATUSES = frozenset(s.value for ch in Channel for s in STATUSES[ch] if is_final(ch, s))
TOKEN, SECRET, VERIFY = "demo-access-token", "demo-app-secret", "demo-verify-token"
VOICE, WHATSAPP = "demo-calls", "demo-notices"
# what the WhatsApp campaign's replies mean (SPEC §5.2 `replied`): the template's quick-reply buttons and
# their words; STOP and the other opt-out words carriers honour are the default opt_out rule
REPLY_RULES = {
    "confirm": {"buttons": ["CONFIRM"], "keywords": {"en": ["yes", "confirm"]}},
    "decline": {"buttons": ["DECLINE"], "keywords": {"en": ["no", "decline"]}},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the broker --------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def local_broker(folder: Path, which: str = "auto") -> AsyncIterator[tuple[str, str, int]]:
    """(kind, url, MQTT protocol) of a broker for the demo: Mosquitto if installed, else amqtt."""
    binary = None if which == "embedded" else _mosquitto()
    if binary is None and which == "mosquitto":
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    port = free_port()
    if binary is not None:
        conf = folder / "mosquitto.conf"
        text = (
            f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n"
            f"log_dest file {folder}/mosquitto.log\nuser {getpass.getuser()}\n"
        )
        await asyncio.to_thread(conf.write_text, text)
        proc = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            await _wait_port(port)
            yield "mosquitto", f"mqtt://127.0.0.1:{port}", 5
        finally:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await proc.wait()
        return
    try:
        from amqtt.broker import Broker  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise RuntimeError(
            "no MQTT broker: install mosquitto (apt-get install mosquitto) or the embedded one "
            "(pip install 'telgate[demo]')"
        ) from None
    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
        "topic-check": {"enabled": False},
    }
    broker = Broker(config)
    await broker.start()
    try:
        yield "amqtt (embedded, MQTT 3.1.1)", f"mqtt://127.0.0.1:{port}", 4
    finally:
        await broker.shutdown()


def _mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


async def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("the local MQTT broker did not start")


# -- the WhatsApp audience -----------------------------------------------------------------------------
def whatsapp_scenarios(numbers: list[str], speed: float, seed: int) -> dict[str, Scenario]:
    """Per number, what Meta will do: mostly read, some only delivered, some failures (realistic shares)."""
    rng = random.Random(seed)

    def t(lo: float, hi: float) -> float:
        return rng.uniform(lo, hi) / speed

    out: dict[str, Scenario] = {}
    for number in numbers:
        x = rng.random()
        sent = t(0.2, 1.0)
        delivered = sent + t(0.5, 4.0)
        if x < 0.55:
            steps = ((sent, "sent", None), (delivered, "delivered", None), (delivered + t(2, 20), "read", None))
            out[number] = Scenario(statuses=steps)
        elif x < 0.80:
            out[number] = Scenario(statuses=((sent, "sent", None), (delivered, "delivered", None)))
        elif x < 0.88:  # the user cannot be reached on WhatsApp any more
            out[number] = Scenario(statuses=((sent, "sent", None), (delivered, "failed", 131026)))
        elif x < 0.93:  # re-engagement window closed: fails after it was sent (delivery_failed)
            out[number] = Scenario(statuses=((sent, "sent", None), (delivered, "failed", 131047)))
        elif x < 0.97:  # not a WhatsApp user
            out[number] = Scenario(send_error=(400, 131026))
        else:  # a bad parameter in the request
            out[number] = Scenario(send_error=(400, 131008))
    return out


@dataclass(frozen=True)
class Reply:
    """What one customer sends back once they have read the message, `delay_s` after it was read."""

    delay_s: float
    text: str
    payload: str | None = None  # a tap on the template's quick-reply button with this payload; None: a text


def whatsapp_replies(scenarios: dict[str, Scenario], speed: float, seed: int) -> dict[str, Reply]:
    """Per number, its answer: of those who read the message, about two in five tap Confirm, one in seven
    Decline, one in ten asks a question, and one who would not answer writes STOP instead."""
    rng = random.Random(seed + 1)
    readers = [
        n for n, sc in scenarios.items() if sc.send_error is None and any(s == "read" for _, s, _ in sc.statuses)
    ]
    out: dict[str, Reply] = {}
    silent = []
    for number in readers:
        x, delay = rng.random(), rng.uniform(0.3, 2.5) / speed
        if x < 0.40:
            out[number] = Reply(delay, "Confirm", "CONFIRM")
        elif x < 0.55:
            out[number] = Reply(delay, "Decline", "DECLINE")
        elif x < 0.65:
            out[number] = Reply(delay, "Can I come an hour later?")
        else:
            silent.append((number, delay))
    if silent:
        number, delay = rng.choice(silent)
        out[number] = Reply(delay, "STOP")
    return out


class Customers:
    """The demo's WhatsApp customers answering: once the backend saw a message read, its reader's reply (if
    they have one) is due `delay_s` later and posted to the gateway's webhook as Meta posts customer
    messages, signed, with context = the wamid the stand-in gave the message."""

    def __init__(self, standin: StandIn, plan: dict[str, Reply]) -> None:
        self.standin = standin
        self.plan = plan
        self.due: dict[str, tuple[float, Key]] = {}  # number → (when, contact)
        self.posted: dict[Key, str] = {}  # contact → number

    def read(self, key: Key, phone: str, now: float) -> None:
        number = _digits(phone)
        reply = self.plan.get(number)
        if reply is not None and key not in self.posted and number not in self.due:
            self.due[number] = (now + reply.delay_s, key)

    async def post_due(self, now: float) -> None:
        for number, (when, key) in sorted(self.due.items(), key=lambda item: item[1][0]):
            if when > now:
                continue
            del self.due[number]
            wamid = next((s.wamid for s in reversed(self.standin.sent) if s.to == number), None)
            if wamid is None:  # never accepted by the stand-in: nothing to answer
                continue
            reply = self.plan[number]
            if reply.payload is not None:
                message = self.standin.button_message(number, reply.payload, reply.text, context_id=wamid)
            else:
                message = self.standin.text_message(number, reply.text, context_id=wamid)
            self.posted[key] = number
            await self.standin.post_messages([message])

    def answered(self, latest: dict[Key, str]) -> bool:
        """Every reply due is posted and its contact seen `replied`."""
        return not self.due and all(latest.get(key) == "replied" for key in self.posted)


# -- the wire ledger -----------------------------------------------------------------------------------
Key = tuple[str, str]


@dataclass
class Contacted:
    """One contact as the events tell it: its channel, its number, the attempts that entered
    `calling` / `in_progress`."""

    channel: str
    phone: str
    attempts: set[int] = field(default_factory=set)


def _digits(number: str) -> str:
    return re.sub(r"\D", "", number)


def wire_ledger(contacts: dict[Key, Contacted], invites: Counter[str], sends: list[str | None]) -> dict[str, Any]:
    """Compare what the peers received with the events (SPEC §9): INVITEs (distinct Call-IDs) per dialled
    number against the voice attempts of the contacts with that number; Cloud API send requests per
    contact and attempt (their `biz_opaque_callback_data`) against the WhatsApp attempts. Attempts are
    1, 2, …, n per contact: a gap is a mismatch too."""
    voice: Counter[str] = Counter()
    expected_sends: Counter[tuple[Key, int]] = Counter()
    mismatches: list[str] = []
    for key, c in sorted(contacts.items()):
        if c.attempts and c.attempts != set(range(1, max(c.attempts) + 1)):
            mismatches.append(f"{key[0]}/{key[1]}: the events skip an attempt: {sorted(c.attempts)}")
        if c.channel == Channel.VOICE:
            voice[_digits(c.phone)] += len(c.attempts)
        else:
            expected_sends.update((key, a) for a in c.attempts)
    wire_invites: Counter[str] = Counter()
    for user, n in invites.items():
        wire_invites[_digits(user)] += n
    for number in sorted(set(voice) | set(wire_invites)):
        if voice[number] != wire_invites[number]:
            mismatches.append(
                f"voice +{number}: the events show {voice[number]} attempt(s), the PBX received "
                f"{wire_invites[number]} INVITE(s)"
            )
    wire_sends: Counter[tuple[Key, int]] = Counter()
    for data in sends:
        parsed = parse_callback(data)
        wire_sends[parsed if parsed is not None else (("?", str(data)), 0)] += 1
    for key, attempt in sorted(set(expected_sends) | set(wire_sends)):
        if expected_sends[(key, attempt)] != wire_sends[(key, attempt)]:
            mismatches.append(
                f"whatsapp {key[0]}/{key[1]} attempt {attempt}: the events show {expected_sends[(key, attempt)]}, "
                f"the Cloud API received {wire_sends[(key, attempt)]} send(s)"
            )
    voice_contacts = sum(1 for c in contacts.values() if c.channel == Channel.VOICE)
    return {
        "ok": not mismatches,
        "voice": {
            "contacts": voice_contacts,
            "attempts": sum(voice.values()),
            "invites": sum(wire_invites.values()),
        },
        "whatsapp": {
            "contacts": len(contacts) - voice_contacts,
            "attempts": sum(expected_sends.values()),
            "sends": sum(wire_sends.values()),
        },
        "mismatches": mismatches,
    }


def ledger_line(wire: dict[str, Any]) -> str:
    if not wire:
        return "wire ledger: not checked"
    invites, sends = wire["voice"]["invites"], wire["whatsapp"]["sends"]
    if wire["ok"]:
        return f"wire ledger: {invites} INVITEs / {sends} sends match the events"
    return f"wire ledger: MISMATCH ({invites} INVITEs / {sends} sends): " + "; ".join(wire["mismatches"])


# -- the run -----------------------------------------------------------------------------------------
@dataclass
class Summary:
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # campaign → status → contacts
    calls: CallKpi = field(default_factory=CallKpi)  # attempts and answered, as the backend saw them
    whatsapp: WhatsAppKpi = field(default_factory=WhatsAppKpi)
    finals: int = 0
    settled: int = 0
    contacts: int = 0
    metrics_url: str = ""
    readyz_url: str = ""
    broker: str = ""
    seconds: float = 0.0
    wire: dict[str, Any] = field(default_factory=dict)  # the wire ledger: peers' records against the events
    commands: dict[str, int] = field(default_factory=dict)  # what the backend side submitted, by kind
    stalled: list[str] = field(default_factory=list)  # contacts still unsettled when the run went quiet
    replies: dict[str, int] = field(default_factory=dict)  # WhatsApp replies by the campaign's outcome

    def as_dict(self) -> dict[str, Any]:
        return {
            "contacts": self.contacts,
            "final": self.finals,
            "settled": self.settled,
            "counts": self.counts,
            "call_attempts": self.calls.attempts,
            "answered": self.calls.answered,
            "asr": round(self.calls.asr, 3),
            "whatsapp_sent": self.whatsapp.sent,
            "delivery_rate": round(self.whatsapp.delivery_rate, 3),
            "read_rate": round(self.whatsapp.read_rate, 3),
            "replied": self.whatsapp.replied,
            "reply_rate": round(self.whatsapp.reply_rate, 3),
            "replies": self.replies,
            "metrics": self.metrics_url,
            "readyz": self.readyz_url,
            "broker": self.broker,
            "seconds": round(self.seconds, 1),
            "wire": self.wire,
            "commands": self.commands,
            "stalled": self.stalled,
        }


class _Progress:
    """What the backend sees on the bus: latest status per contact, call attempts, WhatsApp milestones."""

    def __init__(self) -> None:
        self.tally = Tally()
        self.settled: dict[tuple[str, str], bool] = {}
        self.calls = CallKpi()
        self.whatsapp = WhatsAppKpi()
        self.seen: set[str] = set()
        self.contacts: dict[Key, Contacted] = {}  # for the wire ledger
        self.latest: dict[Key, str] = {}
        self.replies: Counter[str] = Counter()  # replied contacts by outcome (confirm, decline, opt_out, other)

    def add(self, event: dict[str, Any]) -> bool:
        """Take one contact event; False if it was seen before (a QoS 1 redelivery)."""
        if event.get("event_id") in self.seen:
            return False
        self.seen.add(str(event.get("event_id")))
        key = (str(event["campaign_id"]), str(event["contact_id"]))
        status = str(event["status"])
        previous = event.get("previous_status")
        contact = self.contacts.setdefault(key, Contacted(str(event["channel"]), str(event.get("phone") or "")))
        if status == ("calling" if contact.channel == Channel.VOICE else "in_progress"):
            contact.attempts.add(int(event["attempt"]))
        if event["channel"] == "voice":
            if status == "calling":
                self.calls.attempts += 1
            elif status in ("call_in_progress", "awaiting_operator") and previous == "calling":
                self.calls.answered += 1
        else:
            self.whatsapp.transition(status, previous)
            if status == "replied":
                reply = (event.get("signal") or {}).get("reply") or {}
                self.replies[str(reply.get("outcome") or "other")] += 1
        self.tally.add(event)
        # settled: final, or delivered (not final: the user may read it later, or never)
        self.settled[key] = bool(event["final"]) or status == "delivered"
        self.latest[key] = status
        return True

    def unsettled(self, contacts: dict[str, int]) -> list[str]:
        """`campaign/contact: last status` of each of the demo's contacts (client-0000 … per campaign)
        that has not settled."""
        out = []
        for campaign, n in contacts.items():
            for i in range(n):
                key = (campaign, f"client-{i:04d}")
                if not self.settled.get(key, False):
                    out.append(f"{campaign}/{key[1]}: {self.latest.get(key, 'no event')}")
        return out

    def done(self, campaign: str) -> int:
        return sum(1 for (c, _), f in self.settled.items() if c == campaign and f)

    def replies_line(self) -> str:
        wa = self.whatsapp
        outcomes = ", ".join(f"{outcome} {n}" for outcome, n in sorted(self.replies.items())) or "none yet"
        return f"whatsapp replies: {wa.replied} of {wa.read} read ({outcomes})"


def _settings(folder: Path, bus_url: str, protocol: int, pbx: str, api_base: str, speed: float) -> Settings:
    return load_settings(
        None,
        gateway={"id": "demo", "data_dir": str(folder / "var"), "drain_timeout_s": 5},
        bus={"url": bus_url, "client_id": "telgate-demo", "protocol": protocol},
        http={"listen": f"127.0.0.1:{free_port()}"},
        sip={
            "pbx": pbx,
            "local": "127.0.0.1:0",
            "ring_timeout_s": max(8.0 / speed, 0.5),
            "max_cps": 10.0,
            "max_concurrent_calls": 30,
            "options_interval_s": 5.0,
        },
        whatsapp={
            "api_base": api_base,
            "phone_number_id": "100000000000001",
            "access_token": TOKEN,
            "app_secret": SECRET,
            "verify_token": VERIFY,
            "max_mps": 20,
        },
    )


def _log_to(path: Path) -> None:
    """The gateway's JSON log goes to a file in the demo folder: the terminal is for the live view."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _render(progress: Progress, tasks: dict[str, Any], state: _Progress) -> Group:
    for campaign, task in tasks.items():
        progress.update(task, completed=state.done(campaign))
    return Group(progress, state.tally.table(), state.replies_line())


async def run_demo(contacts: int, speed: float, console: Console, seed: int = 7, broker: str = "auto") -> Summary:
    started = time.monotonic()
    summary = Summary(contacts=2 * contacts)
    state = _Progress()
    voice_numbers = [f"+420601{n:06d}" for n in range(contacts)]
    wa_numbers = [f"420702{n:06d}" for n in range(contacts)]
    with tempfile.TemporaryDirectory(prefix="telgate-demo-") as tmp:
        folder = Path(tmp)
        _log_to(folder / "telgate.log")
        loop = asyncio.get_running_loop()
        async with local_broker(folder, broker) as (broker_kind, bus_url, protocol):
            summary.broker = broker_kind
            pbx_transport, pbx = await loop.create_datagram_endpoint(
                lambda: PbxSimulator(speed=speed, seed=seed), local_addr=("127.0.0.1", 0)
            )
            scenarios = whatsapp_scenarios(wa_numbers, speed, seed)
            replies = whatsapp_replies(scenarios, speed, seed)
            try:
                async with StandIn(TOKEN, SECRET, "http://127.0.0.1:9/", scenarios=scenarios) as standin:
                    settings = _settings(folder, bus_url, protocol, pbx.address, standin.api_base, speed)
                    app = App(settings)
                    stop = asyncio.Event()
                    async with asyncio.TaskGroup() as tg:  # the gateway fails: the demo stops, saying why
                        gateway_task = tg.create_task(app.run(stop), name="gateway")
                        try:
                            async with asyncio.timeout(20):
                                await app.ready.wait()
                            standin.webhook_url = f"http://127.0.0.1:{app.http_port}/webhooks/whatsapp"
                            summary.metrics_url = f"http://127.0.0.1:{app.http_port}/metrics"
                            summary.readyz_url = f"http://127.0.0.1:{app.http_port}/readyz"
                            customers = Customers(standin, replies)
                            await _drive(
                                bus_url,
                                protocol,
                                voice_numbers,
                                wa_numbers,
                                speed,
                                console,
                                summary,
                                state,
                                customers,
                                lambda: standin.outstanding == 0 and customers.answered(state.latest),
                            )
                        finally:
                            stop.set()
                            await _stopped(gateway_task, 30.0)
                    # after the gateway stopped: whatever it put on the wire, to the end, is in the peers' records
                    summary.wire = wire_ledger(
                        state.contacts, pbx.invites_by_number(), [s.callback_data for s in standin.received]
                    )
            finally:
                pbx_transport.close()
    summary.seconds = time.monotonic() - started
    return summary


async def _stopped(gateway: asyncio.Task[None], within_s: float) -> None:
    """Give the gateway `within_s` to drain and stop after its stop was asked, then cancel it: the demo
    always ends. A cancel or its own error reaches the caller through the task group that owns it."""
    _, running = await asyncio.wait((gateway,), timeout=within_s)
    if running:
        log.warning("the gateway did not stop in time: cancelled", extra={"s": within_s})
        gateway.cancel()


async def _drive(
    bus_url: str,
    protocol: int,
    voice_numbers: list[str],
    wa_numbers: list[str],
    speed: float,
    console: Console,
    summary: Summary,
    state: _Progress,
    customers: Customers,
    webhooks_quiet: Callable[[], bool],
) -> None:
    port = int(bus_url.rsplit(":", 1)[1])
    version = aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311
    n = len(voice_numbers)
    async with aiomqtt.Client("127.0.0.1", port, identifier="demo-backend", protocol=version) as client:
        await client.subscribe("telgate/v1/evt/contact/#", qos=1)
        await client.subscribe("telgate/v1/gateways/+/status", qos=1)
        summary.commands = await submit_campaigns(bus_url, protocol, voice_numbers, wa_numbers, speed)

        progress = Progress(
            TextColumn("{task.description:<26}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        tasks = {
            VOICE: progress.add_task(f"voice    {VOICE}", total=n),
            WHATSAPP: progress.add_task(f"whatsapp {WHATSAPP}", total=n),
        }
        settle_until: float | None = None
        console.print(
            f"[bold]telgate demo[/]: {n} calls through a PBX simulator, {n} WhatsApp messages through the Cloud API "
            f"stand-in; the gateway's metrics: {summary.metrics_url}  readiness: {summary.readyz_url}"
        )
        # a healthy run is never quiet for longer than its longest wait (a 60 s retry delay at speed 1):
        # past that the demo stops and names the contacts it is still waiting for
        stall_s = max(30.0, 200.0 / speed)
        last_change = time.monotonic()
        async with Receiver(client) as receiver:
            with Live(_render(progress, tasks, state), console=console, refresh_per_second=4, transient=False) as live:
                while True:
                    message = await receiver.get(0.25)
                    if message is not None and str(message.topic).startswith("telgate/v1/evt/contact/"):
                        with contextlib.suppress(TypeError, ValueError, KeyError):
                            event = json.loads(message.payload)
                            if state.add(event):
                                last_change = time.monotonic()
                                if event["status"] == "read":  # the customer read it: some answer
                                    key = (str(event["campaign_id"]), str(event["contact_id"]))
                                    customers.read(key, str(event.get("phone") or ""), last_change)
                    await customers.post_due(time.monotonic())
                    live.update(_render(progress, tasks, state))
                    if state.done(VOICE) + state.done(WHATSAPP) >= 2 * n and webhooks_quiet():
                        # every contact settled and Meta (the stand-in) has nothing more to say: one last look
                        settle_until = settle_until or time.monotonic() + 0.5
                        if time.monotonic() >= settle_until:
                            break
                    else:
                        settle_until = None
                        if time.monotonic() - last_change > stall_s:
                            summary.stalled = state.unsettled({VOICE: n, WHATSAPP: n}) or [
                                "the Cloud API stand-in: status webhooks or customers' replies still to come"
                            ]
                            break
    summary.counts = {
        campaign: dict(sorted(by_status.items())) for (campaign, _), by_status in sorted(state.tally.counts().items())
    }
    summary.finals = sum(1 for (_, _, _), (_, status) in state.tally.latest.items() if status in FINAL_STATUSES)
    summary.settled = state.done(VOICE) + state.done(WHATSAPP)
    summary.calls, summary.whatsapp = state.calls, state.whatsapp
    summary.replies = dict(sorted(state.replies.items()))


async def submit_campaigns(
    bus_url: str, protocol: int, voice_numbers: list[str], wa_numbers: list[str], speed: float
) -> dict[str, int]:
    """Both campaigns, as a backend submits them: created and started (each command's result awaited, so
    the contacts find their campaign started), then the contacts in bulk commands through the command
    window (SPEC §3's flow control, gateway/tools/submit.py). A command the gateway refuses stops the demo."""
    retry = {"max_attempts": 3, "delays_s": [round(30.0 / speed, 2), round(60.0 / speed, 2)]}
    voice = [
        {"contact_id": f"client-{i:04d}", "phone": number, "meta": {"crm_id": f"A-{1000 + i}"}}
        for i, number in enumerate(voice_numbers)
    ]
    whatsapp = [{"contact_id": f"client-{i:04d}", "phone": f"+{number}"} for i, number in enumerate(wa_numbers)]
    target = BusTarget(url=bus_url, protocol=5 if protocol == 5 else 4, client_id="demo-commands")
    async with CommandWindow(target) as window:
        for campaign in (VOICE, WHATSAPP):
            for action in ("create", "start"):
                command: dict[str, Any] = {
                    "command_id": f"{campaign}-{action}",
                    "campaign_id": campaign,
                    "action": action,
                }
                if campaign == WHATSAPP and action == "create":
                    command["replies"] = REPLY_RULES  # what its template's quick-reply buttons mean
                _accepted(await window.call("campaign", command))
        template = {"name": "appointment_reminder", "language": "en_US"}
        policy = {"max_attempts": 2, "delays_s": [round(20.0 / speed, 2)]}
        bulks = _bulks("dial", VOICE, voice, {"policy": retry}) + _bulks(
            "send", WHATSAPP, whatsapp, {"template": template, "policy": policy}
        )
        futures = [await window.submit(kind, command) for kind, command in bulks]
        for result in await asyncio.gather(*futures):
            _accepted(result)
        return {"campaign": 4, **Counter(kind for kind, _ in bulks), "republished": window.republished}


def _bulks(
    kind: str, campaign: str, contacts: list[dict[str, Any]], shared: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """`contacts` as bulk `dial`/`send` commands of at most 1,000 each (SPEC §4)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for first in range(0, len(contacts), MAX_BULK_CONTACTS):
        part = contacts[first : first + MAX_BULK_CONTACTS]
        out.append((kind, {"command_id": f"{kind}-{first}", "campaign_id": campaign, **shared, "contacts": part}))
    return out


def _accepted(result: CommandResult) -> None:
    if not result.accepted:
        raise RuntimeError(f"the gateway refused {result.kind} {result.command_id}: {result.error}")
    if result.contacts_refused:
        raise RuntimeError(f"the gateway refused contacts of {result.command_id}: {result.contacts_refused[:3]}")


def print_summary(summary: Summary, console: Console) -> None:
    console.print()
    table = Table(title="telgate demo: final statuses")
    table.add_column("campaign")
    table.add_column("status")
    table.add_column("contacts", justify="right")
    for campaign, by_status in summary.counts.items():
        for status, count in by_status.items():
            table.add_row(campaign, status, str(count))
    console.print(table)
    console.print(
        f"[bold]{summary.settled}[/] of {summary.contacts} contacts settled in {summary.seconds:.0f} s: "
        f"{summary.finals} final, {summary.settled - summary.finals} WhatsApp messages delivered and not read "
        f"(yet: `delivered` is not final). Broker: {summary.broker}"
    )
    calls, wa = summary.calls, summary.whatsapp
    console.print(f"voice: {calls.attempts} call attempts, {calls.answered} answered — ASR {calls.asr:.0%}")
    console.print(
        f"whatsapp: {wa.sent} sent — delivery rate {wa.delivery_rate:.0%}, read rate {wa.read_rate:.0%}, "
        f"reply rate {wa.reply_rate:.0%}"
    )
    outcomes = ", ".join(f"{outcome} {n}" for outcome, n in summary.replies.items()) or "none"
    console.print(f"whatsapp replies: {wa.replied} ({outcomes}); an opt_out blacklists the number")
    console.print(ledger_line(summary.wire), markup=False, highlight=False)
    if summary.stalled:
        console.print(stalled_line(summary), markup=False, highlight=False)
    sent = summary.commands
    console.print(
        f"submitted as a backend does (gateway/tools/submit.py): {sent.get('campaign', 0)} campaign commands, "
        f"{sent.get('dial', 0)} bulk dial and {sent.get('send', 0)} bulk send"
    )
    console.print(f"the gateway served {summary.metrics_url} and {summary.readyz_url} while it ran")
    console.print("next: `telgate watch` against your own broker, or `telgate run --config telgate.toml`")


async def _until_signal(work: Coroutine[Any, Any, Summary]) -> Summary:
    """`work` in the main task, which SIGINT and SIGTERM cancel (it then stops the gateway it runs)."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, main_task.cancel)
    return await work


def main(contacts: int, speed: float, as_json: bool, broker: str = "auto") -> int:
    console = Console(stderr=as_json)
    try:
        summary = asyncio.run(_until_signal(run_demo(contacts, speed, console, broker=broker)))
    except asyncio.CancelledError:
        console.print("demo stopped")
        return 130
    if as_json:
        console.print()
        console.print(ledger_line(summary.wire), markup=False, highlight=False)  # stderr, beside the live view
        if summary.stalled:
            console.print(stalled_line(summary), markup=False, highlight=False)
        print(json.dumps(summary.as_dict()))
    else:
        print_summary(summary, console)
    # the demo shows SPEC §9's guarantee: if what the simulators received disagrees with the events, the
    # run has failed, whatever the counts look like; so has a run that went quiet before it settled
    return 0 if summary.wire.get("ok", False) and not summary.stalled else 1


def stalled_line(summary: Summary) -> str:
    shown = "; ".join(summary.stalled[:10]) + (
        f"; … {len(summary.stalled) - 10} more" if len(summary.stalled) > 10 else ""
    )
    return f"STALLED: nothing changed for too long, {len(summary.stalled)} still waited for: {shown}"

"""The composition root: builds every part from the settings, owns startup, drain and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import signal
import time
from datetime import datetime, timedelta
from typing import Any

import aiomqtt
from aiohttp import web
from pydantic import SecretStr

from gateway import __version__
from gateway.bus import COMMAND_KINDS, Bus
from gateway.bus import shim as mqtt_shim
from gateway.channels.voice import VoiceChannel
from gateway.channels.whatsapp import WhatsAppChannel
from gateway.cluster import identity
from gateway.cluster.membership import Cluster
from gateway.config import ConfigError, Settings, mask_url
from gateway.contract.topics import Topics
from gateway.domain import effects as fx
from gateway.domain.policy import Policy
from gateway.domain.state import ContactState
from gateway.domain.statuses import Channel
from gateway.engine.commands import INTERNAL_ERROR, CommandContext
from gateway.engine.dispatcher import Dispatcher, Scheduler
from gateway.engine.engine import Engine, Unit, utcnow
from gateway.engine.loops import StoreBackoff
from gateway.engine.ports import ChannelPort
from gateway.service.http import build_app
from gateway.service.http import runner as http_runner
from gateway.service.memory import trim_allocator
from gateway.store import Store, StoreError, Txn, open_store
from metrics.influx import InfluxTarget, InfluxWriter
from metrics.recorder import Recorder, influx_points
from whatsapp import webhook
from whatsapp.client import CloudApiClient

log = logging.getLogger("telgate.app")


def restart_rule(unit: Unit, gateway_id: str) -> int:
    """SPEC §9: what this gateway left in flight when it died is settled before anything else runs."""
    return unit.restart_rule(gateway_id)


# the number history the caps read is kept at least this long: every hold `Limits` accepts fits in it
NUMBER_HISTORY_DAYS = 366


def prune_history(txn: Txn, older_than: datetime, numbers_older_than: datetime | None = None) -> dict[str, int]:
    return txn.prune(older_than, numbers_older_than)


def influx_writer(settings: Settings, recorder: Recorder) -> InfluxWriter | None:
    """The InfluxDB writer when `influx.url` is set (SPEC §8)."""
    cfg = settings.influx
    if not cfg.url:
        return None
    target = InfluxTarget(
        url=cfg.url,
        api=cfg.api,
        database=cfg.database,
        bucket=cfg.bucket,
        org=cfg.org,
        token=cfg.token.get_secret_value() if cfg.token else None,
        username=cfg.username,
        password=cfg.password.get_secret_value() if cfg.password else None,
    )
    gateway_id, voice = settings.gateway.id, settings.sip.active
    return InfluxWriter(
        target, lambda now_ms: influx_points(recorder, gateway_id, now_ms, voice), interval_s=cfg.interval_s
    )


def _required(value: str | SecretStr | None, key: str) -> str:
    """A setting the enabled channel cannot do without, as text: absent or empty is a configuration error."""
    text = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not text:
        raise ConfigError(key, "required (and not empty) when its channel is enabled")
    return text


class App:
    def __init__(self, settings: Settings, ports: list[ChannelPort] | None = None, store: Store | None = None) -> None:
        settings, self.earlier = identity.resolve(settings)  # the id kept with the data dir, earlier sessions
        self.settings = settings
        self.started_at = utcnow()
        self.recorder = Recorder(__version__, settings.metrics.campaign_label)
        self.store = store or open_store(settings.store_url)
        self.engine = Engine(self.store, settings.gateway.id, Topics(settings.bus.topic_prefix), self.recorder)
        self.ports: dict[Channel, ChannelPort] = {}
        self.engine.ports = self.ports
        retry = settings.retry
        self.ctx = CommandContext(
            default_region=settings.gateway.default_region,
            default_policy=Policy(
                max_attempts=retry.max_attempts, delays_s=tuple(retry.delays_s), retry_on=tuple(retry.retry_on)
            ),
            enabled=frozenset(),
            ring_timeout_s=settings.sip.ring_timeout_s,
            connect_to=settings.sip.connect_to or None,
            ambiguous_timeout_s=settings.whatsapp.ambiguous_timeout_s,
            prompts_dir=settings.prompts_dir,
        )
        self.bus = Bus(
            settings.bus,
            settings.client_id,
            settings.gateway.id,
            self.engine,
            self.recorder,
            self.ctx,
            self.started_at,
            self._channel_states,
        )
        self.recorder.start_commands_failed((*sorted(COMMAND_KINDS), "unknown"), INTERNAL_ERROR)
        self.scheduler = Scheduler(self.engine)
        epoch = int(self.started_at.timestamp() * 1000)  # presence says the same epoch
        gw = settings.gateway
        self.cluster = Cluster(
            self.engine, self.store, gw.id, epoch, gw.lease_s, self.recorder, bus_client=settings.client_id
        )
        self.cluster.on_buried = self._adopt_session
        self.cluster.on_lost = self.bus.abort
        # the MQTT sessions of members buried here, for `_adopt_buried` (in the app's TaskGroup) to end
        self._adoptions: asyncio.Queue[str] = asyncio.Queue()
        self.cluster.busy_parts = self.bus.busy_parts
        if self.store.shared:  # several instances may share it: publish the partitions this one holds
            self.bus.parts = self.cluster.parts
            self.scheduler.max_sleep_s = gw.lease_s
        self.dispatchers: list[Dispatcher] = []
        self.http_routes: list[web.RouteDef] = []
        self.ready = asyncio.Event()
        self.http_port: int | None = None  # the public listener (webhooks, /healthz)
        self.admin_port: int | None = None  # /readyz, /metrics, the contact API: http_port unless admin_listen
        self.engine.on("commit", self.bus.notify)
        self.engine.on("timers", self.scheduler.wake)
        for port in ports or []:
            self.add_port(port)
        self.whatsapp: WhatsAppChannel | None = None
        if settings.whatsapp.active:
            self._whatsapp(settings)
        self.influx = influx_writer(settings, self.recorder)
        self.voice: VoiceChannel | None = None
        if settings.sip.active:
            self.voice = VoiceChannel(self.engine, self.recorder, settings.sip, settings.prompts_dir)
            self.add_port(self.voice)

    def _whatsapp(self, settings: Settings) -> None:
        wa = settings.whatsapp
        # validation refuses a missing or empty one already (config.py): this is not an assert all the same
        number = _required(wa.phone_number_id, "whatsapp.phone_number_id")
        access_token = _required(wa.access_token, "whatsapp.access_token")
        app_secret = _required(wa.app_secret, "whatsapp.app_secret")
        verify_token = _required(wa.verify_token, "whatsapp.verify_token")
        client = CloudApiClient(wa.api_base, wa.api_version, number, access_token, wa.request_timeout_s)
        self.whatsapp = WhatsAppChannel(
            self.engine,
            client,
            self.recorder,
            wa.max_mps,
            wa.ambiguous_timeout_s,
            phone_number_id=wa.phone_number_id or "",
        )
        self.add_port(self.whatsapp)
        self.http_routes += webhook.routes(
            "/webhooks/whatsapp",
            app_secret.encode(),
            verify_token,
            settings.http.max_body_bytes,
            self.whatsapp.on_notification,
            lambda result: self.recorder.wa_webhooks.labels(result).inc(),
            settings.http.read_timeout_s,
        )

    def add_port(self, port: ChannelPort) -> None:
        """Enable a channel (before `run`): its commands are accepted and its contacts dispatched."""
        self.ports[port.channel] = port
        self.ctx = dataclasses.replace(self.ctx, enabled=frozenset(self.ports))
        self.bus.ctx = self.ctx
        dispatcher = Dispatcher(self.engine, port)
        if self.store.shared:
            dispatcher.members = lambda: self.cluster.size
            dispatcher.fenced = lambda: self.cluster.fenced
            dispatcher.max_sleep_s = self.settings.gateway.lease_s
            self.cluster.on_change.append(dispatcher.wake)
        self.dispatchers.append(dispatcher)
        self.engine.on("dispatch", dispatcher.wake)

    def _channel_states(self) -> tuple[str, str]:
        voice = "off" if Channel.VOICE not in self.ports else (self.voice.state if self.voice else "up")
        wa = "off" if Channel.WHATSAPP not in self.ports else (self.whatsapp.state if self.whatsapp else "up")
        return voice, wa

    def readiness(self) -> dict[str, str]:
        return {
            "store": "open" if self.store.is_open else "closed",
            "bus": "connected" if self.bus.connected.is_set() else "disconnected",
        }

    async def _outbox_gauges(self) -> None:
        backoff = StoreBackoff("outbox-gauges")
        while True:
            try:
                count, oldest = await self.store.read(lambda txn: txn.outbox_stats())
            except StoreError as exc:
                await asyncio.sleep(backoff.failed(exc))
                continue
            backoff.ok()
            self.recorder.outbox_pending.set(count)
            self.recorder.outbox_oldest.set(0 if oldest is None else max(0.0, time.time() - oldest))
            await asyncio.sleep(1.0)

    async def _trim_after_bursts(self, every_s: float = 1.0) -> None:
        """Once a burst of commands is over (some arrived since the last look, none in the last second),
        hand the heap's free memory back: a burst's bulk payloads left ~15 MiB of free heap that glibc
        kept (gateway/service/memory.py). One malloc_trim per burst, nothing on the hot path."""
        seen = self.bus.received
        busy = False
        while True:
            await asyncio.sleep(every_s)
            now = self.bus.received
            if now != seen:
                busy, seen = True, now
            elif busy:
                busy = False
                await asyncio.to_thread(trim_allocator)

    async def _contact_gauges(self) -> None:
        """Contacts per status from the store, every `metrics.contacts_refresh_s` (SPEC §11)."""
        backoff = StoreBackoff("contact-gauges")
        while True:
            await asyncio.sleep(self.settings.metrics.contacts_refresh_s)
            try:
                counts = await self.store.read(lambda txn: txn.all_counts())
            except StoreError as exc:
                await asyncio.sleep(backoff.failed(exc))
                continue
            backoff.ok()
            self.recorder.set_contacts(counts)

    def _adopt_session(self, member: str, bus_client: str) -> None:
        """A member this one buried left an MQTT session in the share group: `_adopt_buried` empties it
        and ends it."""
        if not bus_client or bus_client == self.settings.client_id or self.settings.bus.protocol != 5:
            return
        self._adoptions.put_nowait(bus_client)

    async def _adopt_buried(self) -> None:
        """The adopter: each session `_adopt_session` asked for is emptied and ended by a task of its own,
        all of them children of this task's TaskGroup (cancelled with it at a stop). One the broker fails
        is logged and ends neither the others nor the service; a bug ends the service, as in every
        background loop (gateway/engine/loops.py)."""
        async with asyncio.TaskGroup() as tg:
            while True:
                bus_client = await self._adoptions.get()
                tg.create_task(self._adopt_one(bus_client), name=f"adopt-{bus_client}")

    async def _adopt_one(self, bus_client: str) -> None:
        try:
            ended = await self.bus.adopt(bus_client, timeout_s=4 * self.settings.gateway.lease_s)
        except (aiomqtt.MqttError, OSError) as exc:  # the broker went away: its commands wait for their session
            log.warning(
                "could not adopt a buried member's bus session", extra={"client_id": bus_client, "detail": repr(exc)}
            )
            return
        log.info("buried member's bus session", extra={"client_id": bus_client, "ended": ended})

    async def _adopt_earlier(self) -> None:
        """The bus sessions this data dir left under earlier ids (a redeploy under a new `gateway.id`): each
        is emptied into this engine and ended, then forgotten (gateway/cluster/identity.py). One that cannot be
        (the broker down, the old id running elsewhere) is tried again at the next start."""
        await self.bus.connected.wait()
        for old in self.earlier:
            ended = old.bus_client == self.settings.client_id or self.settings.bus.protocol != 5
            if not ended:
                try:
                    ended = await self.bus.adopt(old.bus_client, timeout_s=4 * self.settings.gateway.lease_s)
                except (aiomqtt.MqttError, OSError) as exc:  # the broker went away: the next start tries again
                    log.warning("could not adopt an earlier bus session", extra={"detail": repr(exc)})
            if ended:
                await asyncio.to_thread(identity.forget, self.settings.gateway.data_dir, old)
            log.info(
                "earlier bus session of this data dir",
                extra={"client_id": old.bus_client, "earlier_id": old.gateway_id, "ended": ended},
            )

    async def _notifications(self) -> None:
        """What other instances committed for this one: a cancel of a call it owns (SPEC §11)."""
        async for payload in self.store.notifications():
            try:
                note = json.loads(payload)
                wake = note.get("wake")
                if wake == "outbox":  # another instance committed events: some may be in partitions held here
                    self.bus.notify()
                    continue
                if wake == "ready":  # another instance queued contacts or started a campaign
                    for dispatcher in self.dispatchers:
                        dispatcher.wake()
                    continue
                if note.get("origin") == self.settings.gateway.id or note.get("effect") != "cancel_call":
                    continue
                port = self.ports.get(Channel(note["channel"]))
                campaign_id, contact_id = note["key"]
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("unreadable store notification", extra={"detail": repr(exc)})
                continue
            if port is not None:  # the port cancels it when the call is its own, and ignores it otherwise
                contact = ContactState(campaign_id=campaign_id, contact_id=contact_id, channel=port.channel)
                port.submit(fx.CancelCall(), contact)

    async def _prune(self, every_s: float = 3600.0) -> None:
        """Retention (SPEC §11): history, command ids and wamids older than `store.retention_days`, hourly.
        Housekeeping: a failed turn follows the loops' policy (gateway/engine/loops.py)."""
        keep = timedelta(days=self.settings.store.retention_days)
        backoff = StoreBackoff("store-prune")
        while True:
            now = utcnow()
            cutoff = now - keep
            numbers = now - max(keep, timedelta(days=NUMBER_HISTORY_DAYS))
            try:
                pruned = await self.store.run(
                    functools.partial(prune_history, older_than=cutoff, numbers_older_than=numbers)
                )
            except StoreError as exc:
                await asyncio.sleep(backoff.failed(exc))  # then the next turn, not an hour later
                continue
            else:
                backoff.ok()
                log.info("pruned", extra={"older_than": cutoff.isoformat(), **pruned})
            await asyncio.sleep(every_s)

    async def run(self, stop: asyncio.Event) -> None:
        mqtt_shim.check()  # aiomqtt and paho have what the bus relies on, or say which and their versions
        await self.store.open()
        runners: list[web.AppRunner] = []
        try:
            async with asyncio.TaskGroup() as tg:
                engine_task = tg.create_task(self.engine.run(), name="engine")
                await self.cluster.join()  # before the restart rule: no other member buries this id meanwhile
                lease = tg.create_task(self.cluster.run(), name="cluster-lease")
                settled = await self.engine.execute(lambda u: restart_rule(u, self.settings.gateway.id))
                for old in self.earlier:  # what this data dir left in flight under an earlier id (identity.py)
                    if old.gateway_id and old.gateway_id != self.settings.gateway.id:
                        settled += await self.engine.execute(functools.partial(restart_rule, gateway_id=old.gateway_id))
                if settled:
                    log.info("restart rule applied", extra={"contacts": settled})
                self.recorder.set_contacts(await self.store.read(lambda txn: txn.all_counts()))
                self.http_port, self.admin_port = await self._serve_http(runners)
                background = [
                    tg.create_task(self.bus.run(), name="bus"),
                    tg.create_task(self.scheduler.run(), name="scheduler"),
                    tg.create_task(self._outbox_gauges(), name="outbox-gauges"),
                    tg.create_task(self._contact_gauges(), name="contact-gauges"),
                    tg.create_task(self._trim_after_bursts(), name="allocator-trim"),
                    tg.create_task(self._prune(), name="store-prune"),
                    tg.create_task(self._notifications(), name="cluster-notifications"),
                    tg.create_task(self._adopt_buried(), name="adopt-buried"),
                    *([tg.create_task(self._adopt_earlier(), name="adopt-earlier")] if self.earlier else []),
                    *(tg.create_task(d.run(), name=f"dispatch-{d.port.channel}") for d in self.dispatchers),
                    *(tg.create_task(p.run(), name=f"port-{p.channel}") for p in self.ports.values()),
                    *([tg.create_task(self.influx.run(), name="influx")] if self.influx is not None else []),
                ]
                log.info(
                    "telgate running",
                    extra={
                        "gateway_id": self.settings.gateway.id,
                        "http": self.http_port,
                        "admin_http": self.admin_port,
                        "bus": mask_url(self.settings.bus.url),
                        "version": __version__,
                    },
                )
                self.ready.set()
                try:
                    await stop.wait()
                except BaseException:  # a task failed (LeaseLost, a store error): no drain, no reconnecting
                    self.bus.abort()
                    raise
                await self._drain(background)
                lease.cancel()
                await self.cluster.leave()
                # the HTTP server stops while the engine still runs: a webhook in flight is committed and
                # answered (or refused and retried by Meta), never left waiting for an engine that is gone
                while runners:
                    await runners.pop().cleanup()
                engine_task.cancel()
        finally:
            while runners:
                await runners.pop().cleanup()
            await self.store.close()
        log.info("telgate stopped")

    async def _serve_http(self, runners: list[web.AppRunner]) -> tuple[int | None, int | None]:
        """The public listener (webhooks, /healthz) and, with `http.admin_listen`, the admin one (/readyz,
        /metrics, the contact API) — or both kinds on the one listener. The ports bound (port 0 asks the
        OS)."""
        cfg = self.settings.http
        token = cfg.api_token.get_secret_value() if cfg.api_token is not None else None
        separate = cfg.admin_listen is not None

        async def serve(listen: str, public: bool, admin: bool) -> int | None:
            app = build_app(
                self.store,
                self.recorder,
                self.readiness,
                cfg.max_body_bytes,
                self.http_routes,
                public=public,
                admin=admin,
                api_token=token,
                max_concurrent=cfg.max_concurrent_requests,
                read_timeout_s=cfg.read_timeout_s,
            )
            runner = http_runner(app, cfg.idle_timeout_s)
            await runner.setup()
            runners.append(runner)
            host, port = listen.rsplit(":", 1)
            site = web.TCPSite(runner, host.strip("[]"), int(port))
            await site.start()
            bound = runner.addresses  # this runner's one site: (host, port, ...) per listening socket
            return int(bound[0][1]) if bound else None

        public_port = await serve(cfg.listen, public=True, admin=not separate)
        admin_port = await serve(cfg.admin_listen, public=False, admin=True) if cfg.admin_listen else public_port
        if not separate and token is None and not cfg.listen.startswith(("127.", "localhost", "[::1]")):
            log.warning(
                "the contact read API and /metrics are served unauthenticated on a public listener:"
                " set http.admin_listen or http.api_token",
                extra={"listen": cfg.listen},
            )
        return public_port, admin_port

    async def _drain(self, background: list[asyncio.Task[Any]]) -> None:
        started = time.monotonic()
        deadline = started + self.settings.gateway.drain_timeout_s
        if self.store.shared and self.cluster.size > 1:
            self.bus.leave_on_stop = True  # the others take the commands from now: no session left behind
        if self.bus.leave_on_stop:  # a final stop with other instances alive: they take the commands from now
            # at most half the drain: the results of what it commits must still be published below
            await self.bus.leave_group(timeout_s=self.settings.gateway.drain_timeout_s / 2)
        await self.bus.stop_accepting()
        for task in background:  # nothing new is dialled, sent or fired while draining
            if task.get_name().startswith(("dispatch-", "scheduler")):
                task.cancel()
        # what is in flight is what the channels hold on the wire (the SIP UA's dialogs, the sends not
        # answered): nothing in flight, nothing to wait for
        in_flight = {str(ch): p.active() for ch, p in self.ports.items()}
        log.info("draining", extra={"timeout_s": self.settings.gateway.drain_timeout_s, "in_flight": in_flight})
        while time.monotonic() < deadline and any(p.active() for p in self.ports.values()):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        left = {str(ch): p.active() for ch, p in self.ports.items()}
        log.info(
            "in-flight attempts drained" if not any(left.values()) else "drain timed out with attempts in flight",
            extra={"in_flight_left": left, "waited_s": round(time.monotonic() - started, 3)},
        )
        while time.monotonic() < deadline and self.bus.connected.is_set():
            await self.bus.flush_deletes()
            if self.cluster.size > 1:  # the others publish the rest once this one has left
                if self.bus.in_flight() == 0:
                    break
            elif await self.bus.pending() == 0:
                break
            await asyncio.sleep(0.05)
        await self.bus.close()
        for task in background:
            task.cancel()


def run_forever(settings: Settings, ports: list[ChannelPort] | None = None) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await App(settings, ports).run(stop)

    asyncio.run(main())


__all__ = ["App", "datetime", "run_forever"]

"""Every private attribute of aiomqtt and paho-mqtt the gateway touches, in one place, checked at start.

The gateway drives paho below aiomqtt in three ways no public API offers (docs/decisions.md, "The
gateway's cost per packet"): the outbox publishes through paho on aiomqtt's connection and takes the
queued commands without aiomqtt's task per message (aiomqtt's `_client`, `_queue`, `_disconnected`,
`_loop`); `gateway/bus/mqtt_io.py` puts a batched socket under paho (paho's `_sock`, and aiomqtt's reader
callback looping while the socket has `pending()` bytes); PUBACKs of success skip paho's decoding
(`quick_puback`: paho's `_in_packet`, `_out_messages`, `_out_message_mutex`, `_logger`, `_easy_log`,
`_do_on_publish` and `_handle_pubackcomp`); received PUBLISHes and QoS 1 publishes are made with
`LightProperties` and `LightMessageInfo`, subclasses of paho's used by the gateway's own clients only
(`light_publish`, `light_send`: paho's `_handle_publish`, `_handle_on_message`, `_manual_ack`,
`_send_puback`, `_protocol`, `_raise_for_invalid_topic`, `_mid_generate`, `_send_publish`, its queue and
in-flight counts, and the slots of `MQTTMessage` and `MQTTMessageInfo`). paho's own classes are never
patched: another MQTT client in the process gets paho as it is.

Nothing else in the gateway names a private attribute of either library: it calls the functions here.
`check()` runs when the App starts and when the first bus client is made; it looks for every attribute,
method (and its parameters) and behaviour listed in `RELIED_ON` on the installed versions and raises
`LibraryMismatch` naming those versions and what is missing, instead of the gateway failing later, in
the middle of a connection, with an AttributeError. pyproject.toml pins the versions it was written
against; an upgrade runs `tests/unit/test_mqtt_shim.py` first.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from types import ModuleType
from typing import Any

import aiomqtt
import paho.mqtt.client as paho_client
from paho.mqtt.client import MQTT_LOG_DEBUG, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

PahoClient = paho_client.Client


class LibraryMismatch(RuntimeError):
    """The installed aiomqtt or paho-mqtt lacks something this module relies on."""

    def __init__(self, versions: dict[str, str], missing: list[str]) -> None:
        self.versions = versions
        self.missing = missing
        installed = ", ".join(f"{name} {version}" for name, version in versions.items())
        super().__init__(
            f"the installed {installed} lack what gateway/bus/shim.py relies on: "
            + "; ".join(missing)
            + " (pyproject.toml pins the versions the gateway is tested with)"
        )


@dataclass(frozen=True)
class Need:
    """One thing relied on: `owner` is "paho" (paho.mqtt.client.Client, on the class or a fresh instance)
    or "aiomqtt" (aiomqtt.Client on a fresh instance); `params` are a method's parameters after self,
    in order; `source` a fragment its source must hold (a behaviour, checked where the source is there)."""

    owner: str
    name: str
    what: str
    params: tuple[str, ...] | None = None
    source: str | None = None
    kind: Callable[[Any, ModuleType, ModuleType], bool] | None = None


def _is_paho(value: Any, _aiomqtt: ModuleType, paho: ModuleType) -> bool:
    return isinstance(value, paho.Client)


def _is_queue(value: Any, _aiomqtt: ModuleType, _paho: ModuleType) -> bool:
    return isinstance(value, asyncio.Queue)


def _is_future(value: Any, _aiomqtt: ModuleType, _paho: ModuleType) -> bool:
    return isinstance(value, asyncio.Future)


def _is_loop(value: Any, _aiomqtt: ModuleType, _paho: ModuleType) -> bool:
    return isinstance(value, asyncio.AbstractEventLoop)


def _is_dict(value: Any, _aiomqtt: ModuleType, _paho: ModuleType) -> bool:
    return isinstance(value, dict)


def _is_lock(value: Any, _aiomqtt: ModuleType, _paho: ModuleType) -> bool:
    return hasattr(value, "__enter__") and hasattr(value, "__exit__")


RELIED_ON: tuple[Need, ...] = (
    # aiomqtt.Client (instance attributes, made in __init__)
    Need("aiomqtt", "_client", "the paho client under it", kind=_is_paho),
    Need("aiomqtt", "_queue", "the asyncio.Queue of received messages", kind=_is_queue),
    Need("aiomqtt", "_disconnected", "the asyncio.Future that ends the connection", kind=_is_future),
    Need("aiomqtt", "_loop", "its event loop", kind=_is_loop),
    Need(
        "aiomqtt",
        "_on_socket_open",
        "a reader callback that loops while the socket has pending() bytes",
        source="pending()",
    ),
    # paho.mqtt.client.Client
    Need("paho", "_sock", "its socket attribute"),
    Need("paho", "_in_packet", "the packet being read (a dict with 'packet')", kind=_is_dict),
    Need("paho", "_out_messages", "the messages awaiting their PUBACK by mid", kind=_is_dict),
    Need("paho", "_out_message_mutex", "the lock of _out_messages", kind=_is_lock),
    Need("paho", "_logger", "its logger attribute"),
    Need("paho", "_easy_log", "a method", params=("level", "fmt", "args")),
    Need("paho", "_do_on_publish", "a method", params=("mid", "reason_code", "properties")),
    Need("paho", "_handle_pubackcomp", "a method", params=("cmd",)),
    Need("paho", "_packet_handle", "the dispatch of a PUBACK to self._handle_pubackcomp", source="_handle_pubackcomp("),
    Need("paho", "_handle_publish", "a method", params=()),
    Need("paho", "_packet_handle", "the dispatch of a PUBLISH to self._handle_publish", source="_handle_publish("),
    Need("paho", "_handle_on_message", "a method", params=("message",)),
    Need("paho", "_manual_ack", "its manual-ack switch"),
    Need("paho", "_send_puback", "a method", params=("mid",)),
    Need("paho", "_protocol", "its protocol version"),
    Need("paho", "_raise_for_invalid_topic", "a method", params=("topic",)),
    Need("paho", "_mid_generate", "a method", params=()),
    Need(
        "paho",
        "_send_publish",
        "a method",
        params=("mid", "topic", "payload", "qos", "retain", "dup", "info", "properties"),
    ),
    Need("paho", "_max_queued_messages", "its queue limit"),
    Need("paho", "_max_inflight_messages", "its in-flight limit"),
    Need("paho", "_inflight_messages", "its in-flight count"),
    Need(
        "paho",
        "publish",
        "a method whose QoS 1 path light_send copies",
        params=("topic", "payload", "qos", "retain", "properties"),
        source="message = MQTTMessage(local_mid, topic_bytes)",
    ),
    # public, but relied on with these parameters (the outbox, manual acks, the session's end)
    Need("paho", "ack", "a method", params=("mid", "qos")),
    Need("paho", "manual_ack_set", "a method", params=("on",)),
    Need("paho", "loop_write", "a method", params=()),
    Need("paho", "disconnect", "a method", params=("reasoncode", "properties")),
)


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in ("aiomqtt", "paho-mqtt"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "(version unknown)"
    return found


def _probe_aiomqtt(module: ModuleType) -> Any:
    """A fresh, never connected aiomqtt client (its __init__ wants a running loop)."""

    async def make() -> Any:
        return module.Client("127.0.0.1")

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(make())
        finally:
            loop.close()
    return module.Client("127.0.0.1")


def _params(fn: Any) -> tuple[str, ...] | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names = [p.name for p in sig.parameters.values()]
    return tuple(names[1:] if names and names[0] == "self" else names)


def _source_holds(fn: Any, fragment: str) -> bool:
    try:
        return fragment in inspect.getsource(fn)
    except (OSError, TypeError):  # no source installed: nothing to check it by
        return True


def problems(aiomqtt_module: ModuleType = aiomqtt, paho_module: ModuleType = paho_client) -> list[str]:
    """What `RELIED_ON` finds missing in these modules ([] when everything is there)."""
    missing: list[str] = []
    paho_cls = getattr(paho_module, "Client", None)
    aiomqtt_cls = getattr(aiomqtt_module, "Client", None)
    if paho_cls is None:
        return ["paho.mqtt.client.Client"]
    if aiomqtt_cls is None:
        return ["aiomqtt.Client"]
    instances: dict[str, Any] = {}
    try:
        instances["aiomqtt"] = _probe_aiomqtt(aiomqtt_module)
    except Exception as exc:  # a constructor of another shape: say so, with what it raised
        missing.append(f"aiomqtt.Client('127.0.0.1') raised {type(exc).__name__}: {exc}")
    try:
        instances["paho"] = paho_cls(paho_module.CallbackAPIVersion.VERSION2, protocol=paho_module.MQTTv5)
    except Exception as exc:
        missing.append(f"paho.mqtt.client.Client(VERSION2, protocol=MQTTv5) raised {type(exc).__name__}: {exc}")
    classes = {"aiomqtt": aiomqtt_cls, "paho": paho_cls}
    prefix = {"aiomqtt": "aiomqtt.Client", "paho": "paho.mqtt.client.Client"}
    for need in RELIED_ON:
        label = f"{prefix[need.owner]}.{need.name} ({need.what})"
        target = instances.get(need.owner, classes[need.owner])
        if not hasattr(target, need.name):
            missing.append(label)
            continue
        value = getattr(target, need.name)
        if need.kind is not None and need.owner in instances and not need.kind(value, aiomqtt_module, paho_module):
            missing.append(f"{label}: found a {type(value).__name__}")
        elif need.params is not None:
            got = _params(value)
            if got is not None and got != need.params:
                missing.append(f"{label} with parameters {need.params}: found {got}")
        if need.source is not None and not _source_holds(getattr(classes[need.owner], need.name, None), need.source):
            missing.append(f"{label}: its source no longer holds {need.source!r}")
    missing += _shapes(paho_module)
    return missing


# what `LightProperties` and `light_message` were written against
PROPERTIES_ATTRIBUTES = frozenset({"packetType", "types", "names", "properties"})
MESSAGE_SLOTS = frozenset(
    {"_topic", "dup", "info", "mid", "payload", "properties", "qos", "retain", "state", "timestamp"}
)
INFO_SLOTS = frozenset({"_condition", "_iterpos", "_published", "mid", "rc"})


def _shapes(paho_module: ModuleType) -> list[str]:
    missing: list[str] = []
    try:
        from paho.mqtt.properties import Properties as StockProperties

        attrs = set(vars(StockProperties(PacketTypes.PUBLISH)))  # type: ignore[no-untyped-call]
    except Exception as exc:
        attrs = {f"{type(exc).__name__}: {exc}"}
    if attrs != PROPERTIES_ATTRIBUTES:
        missing.append(
            f"paho.mqtt.properties.Properties with the attributes {sorted(PROPERTIES_ATTRIBUTES)}:"
            f" found {sorted(attrs)}"
        )
    for cls_name, slots in (("MQTTMessage", MESSAGE_SLOTS), ("MQTTMessageInfo", INFO_SLOTS)):
        cls = getattr(paho_module, cls_name, None)
        found = set(getattr(cls, "__slots__", ()))
        if found != slots:
            missing.append(f"paho.mqtt.client.{cls_name} with the slots {sorted(slots)}: found {sorted(found)}")
    for name in ("mqtt_ms_invalid", "mqtt_ms_publish", "mqtt_ms_queued", "mqtt_ms_wait_for_puback", "_encode_payload"):
        if getattr(paho_module, name, None) is None:
            missing.append(f"paho.mqtt.client.{name}")
    return missing


_checked = False


def check(aiomqtt_module: ModuleType = aiomqtt, paho_module: ModuleType = paho_client) -> None:
    """Raise `LibraryMismatch` if aiomqtt or paho-mqtt (the installed ones unless given) lacks anything in
    `RELIED_ON`. The installed ones are looked at once per process."""
    global _checked
    installed = aiomqtt_module is aiomqtt and paho_module is paho_client
    if installed and _checked:
        return
    missing = problems(aiomqtt_module, paho_module)
    if missing:
        raise LibraryMismatch(versions(), missing)
    _checked = _checked or installed


# -- aiomqtt's internals -------------------------------------------------------------------------------
def paho_of(client: aiomqtt.Client) -> PahoClient:
    """The paho client under `client` (the outbox publishes on it; manual acks go through it)."""
    return client._client


def incoming(client: aiomqtt.Client) -> asyncio.Queue[aiomqtt.Message]:
    """The queue aiomqtt's message callback puts received messages on (`client.messages` reads it)."""
    return client._queue


def disconnected(client: aiomqtt.Client) -> asyncio.Future[None]:
    """Done when the connection is gone; set an exception on it to end the connection."""
    return client._disconnected


def loop_of(client: aiomqtt.Client) -> asyncio.AbstractEventLoop:
    return client._loop


# -- paho's internals ----------------------------------------------------------------------------------
def socket_of(paho: PahoClient) -> Any:
    return paho._sock


def set_socket(paho: PahoClient, sock: Any) -> None:
    """Put `sock` in place of paho's socket (from its socket-open callback, before anything is read)."""
    paho._sock = sock


def quick_puback(paho: PahoClient) -> None:
    """PUBACKs of success without decoding them.

    Every event the gateway publishes comes back as a PUBACK, and paho decodes each into a new
    `ReasonCode` (which copies its table of 50 names and looks the name up by a walk of it) and a new
    `Properties`: a tenth of the event loop thread with single commands (py-spy `--gil`). A PUBACK of two
    bytes is, by MQTT 5 §3.4.2.1 (and always in 3.1.1), the packet id alone: reason Success, no
    properties; one of three bytes adds a reason code and no properties, and Mosquitto sends 0x10 (No
    matching subscribers) so for every event nobody subscribed to. Those of a success code (below 0x80)
    are handed to paho's own `_do_on_publish` (which also releases paho's in-flight count and sends what
    its in-flight limit held back) with one shared `ReasonCode` per code and one empty `Properties`,
    which nobody changes; every other PUBACK (a refusal, properties, a PUBCOMP) goes through paho's own
    handler. This instance only: other paho clients in the process are left alone."""
    stock = paho._handle_pubackcomp
    codes: dict[int, ReasonCode] = {}
    empty = Properties(PacketTypes.PUBACK)  # type: ignore[no-untyped-call]
    ok = MQTTErrorCode.MQTT_ERR_SUCCESS
    debug = logging.DEBUG

    def handle(cmd: Any) -> MQTTErrorCode:
        packet = paho._in_packet["packet"]
        size = len(packet)
        code = 0 if size == 2 else packet[2] if size == 3 else 0x80
        if cmd != "PUBACK" or code >= 0x80:
            return stock(cmd)
        reason = codes.get(code)
        if reason is None:
            try:
                reason = codes[code] = ReasonCode(PacketTypes.PUBACK, identifier=code)
            except (KeyError, ValueError):  # not a PUBACK reason code: paho's handler says so
                return stock(cmd)
        mid = (packet[0] << 8) | packet[1]
        logger = paho._logger
        if paho.on_log is not None or (logger is not None and logger.isEnabledFor(debug)):
            paho._easy_log(MQTT_LOG_DEBUG, "Received %s (Mid: %d)", cmd, mid)
        with paho._out_message_mutex:
            if mid in paho._out_messages:
                return paho._do_on_publish(mid, reason, empty)
        return ok

    paho._handle_pubackcomp = handle  # type: ignore[method-assign]


# -- received PUBLISHes without rebuilding paho's property tables or a Condition for each ------------------
_TEMPLATE = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
_TYPES, _NAMES, _TABLE = _TEMPLATE.types, _TEMPLATE.names, _TEMPLATE.properties


class LightProperties(Properties):
    """paho's MQTT 5 `Properties`, sharing one copy of the two tables of 27 properties that paho's class
    builds afresh (with 27 `list.index` calls) for every instance; `clear` and `isEmpty` look at the
    instance's own attributes, which are where paho keeps property values, instead of a `str.replace`
    per name. Used only where the gateway makes properties (its outbox, `light_message`): paho's own
    class is left as it is for every other client in the process."""

    def __init__(self, packetType: int) -> None:
        d = self.__dict__
        d["packetType"] = packetType
        d["types"] = _TYPES
        d["names"] = _NAMES
        d["properties"] = _TABLE

    def clear(self) -> None:
        d = self.__dict__
        for name in [n for n in d if n not in PROPERTIES_ATTRIBUTES]:
            del d[name]

    def isEmpty(self) -> bool:
        return all(n in PROPERTIES_ATTRIBUTES for n in self.__dict__)


_SLOT: Any = MQTTMessageInfo.__dict__["_condition"]
_MADE = threading.Lock()


def _condition(info: Any) -> threading.Condition:
    try:
        return _SLOT.__get__(info)  # type: ignore[no-any-return]
    except AttributeError:
        with _MADE:
            try:
                return _SLOT.__get__(info)  # type: ignore[no-any-return]
            except AttributeError:
                cond = threading.Condition()
                _SLOT.__set__(info, cond)
                return cond


class LightMessageInfo(MQTTMessageInfo):
    """paho's `MQTTMessageInfo` without its `threading.Condition` (an RLock, a deque and six bound methods)
    until somebody waits (`wait_for_publish` from another thread): made on first use instead. A message
    published before anyone waited is marked so under a lock the first waiter takes too, so a waiter
    either finds the mark or is notified. For the gateway's own messages only (`light_publish`, `light_send`)."""

    __slots__ = ()
    _condition = property(_condition, _SLOT.__set__)

    def __init__(self, mid: int) -> None:
        self.mid = mid
        self._published = False
        self.rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        self._iterpos = 0

    def _set_as_published(self) -> None:
        try:
            cond = _SLOT.__get__(self)
        except AttributeError:
            with _MADE:
                try:
                    cond = _SLOT.__get__(self)
                except AttributeError:  # nobody waits: the mark is enough
                    self._published = True
                    return
        with cond:
            self._published = True
            cond.notify()


def light_message(
    mid: int, topic: bytes, qos: int, dup: bool, retain: bool, payload: bytes | bytearray, props: Any
) -> MQTTMessage:
    """An `MQTTMessage` as paho makes it (`_handle_publish`, `publish`), with a `LightMessageInfo`."""
    message = MQTTMessage.__new__(MQTTMessage)
    message.timestamp = 0.0
    message.state = paho_client.mqtt_ms_invalid
    message.dup = dup
    message.mid = mid
    message._topic = topic
    message.payload = payload
    message.qos = qos
    message.retain = retain
    message.info = LightMessageInfo(mid)
    message.properties = props
    return message


def light_publish(paho: PahoClient) -> None:
    """Received MQTT 5 PUBLISHes of QoS 1 (every command) decoded with `LightProperties` into a message
    with a `LightMessageInfo`: paho's `Properties` rebuilt its tables for each (a fifth of the event loop
    thread with single commands, py-spy) and every message got a `threading.Condition` that only
    `wait_for_publish` needs, which nobody calls on a received message. Measured: +25 % gateway CPU per
    single command without the two (bench.ingest, docs/decisions.md). Decoded as paho's
    `_packet.decode_publish` does; the message then goes to paho's `_handle_on_message` and, unless
    acknowledged by hand, paho's `_send_puback`, as in paho's `_handle_publish`. Anything else (QoS 0 or
    2, MQTT 3.1.1, a packet this cannot read, paho's debug logging on) takes paho's own handler. This
    instance only."""
    stock = paho._handle_publish
    debug = logging.DEBUG
    v5 = paho_client.MQTTv5
    ok = MQTTErrorCode.MQTT_ERR_SUCCESS

    def handle() -> MQTTErrorCode:
        header = paho._in_packet["command"]
        qos = (header & 0x06) >> 1
        logger = paho._logger
        if (
            qos != 1
            or paho._protocol != v5
            or paho.on_log is not None
            or (logger is not None and logger.isEnabledFor(debug))
        ):
            return stock()
        packet = paho._in_packet["packet"]
        try:
            slen = (packet[0] << 8) | packet[1]
            end = 2 + slen
            if end + 2 > len(packet):
                return stock()
            topic = bytes(packet[2:end])
            mid = (packet[end] << 8) | packet[end + 1]
            props = LightProperties(PacketTypes.PUBLISH)
            _, used = props.unpack(packet[end + 2 :])  # type: ignore[no-untyped-call]
        except Exception:  # paho's handler reads it again and says what is wrong, in its own words
            return stock()
        payload = bytes(packet[end + 2 + used :])
        message = light_message(mid, topic, qos, bool(header & 0x08), bool(header & 0x01), payload, props)
        message.timestamp = time.monotonic()
        paho._handle_on_message(message)
        if paho._manual_ack:
            return ok
        return paho._send_puback(mid)

    paho._handle_publish = handle  # type: ignore[method-assign]


def light_send(paho: PahoClient) -> None:
    """QoS 1 publishes (the outbox's events, presence) with a `LightMessageInfo`: paho's `publish` gives
    every message a `threading.Condition` that only `wait_for_publish` needs, which neither aiomqtt nor
    the gateway calls (two per single command: with `light_publish` alone a single command still cost
    ~10 % more gateway CPU than with paho's class patched, bench.ingest). This is paho 2.2.0's `publish`
    for QoS 1, step for step, with `light_message` in place of `MQTTMessage(local_mid, topic_bytes)`;
    any other QoS takes paho's own. This instance only."""
    stock = paho.publish
    encode = paho_client._encode_payload
    v5 = paho_client.MQTTv5
    publish_state, queued, waiting = (
        paho_client.mqtt_ms_publish,
        paho_client.mqtt_ms_queued,
        paho_client.mqtt_ms_wait_for_puback,
    )
    no_conn = MQTTErrorCode.MQTT_ERR_NO_CONN
    queue_size = MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
    ok = MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(
        topic: str, payload: Any = None, qos: int = 0, retain: bool = False, properties: Properties | None = None
    ) -> MQTTMessageInfo:
        if qos != 1:
            return stock(topic, payload, qos, retain, properties)
        if paho._protocol != v5 and (topic is None or len(topic) == 0):
            raise ValueError("Invalid topic.")
        topic_bytes = topic.encode("utf-8")
        paho._raise_for_invalid_topic(topic_bytes)
        local_payload = encode(payload)
        if len(local_payload) > 268435455:
            raise ValueError("Payload too large.")
        local_mid = paho._mid_generate()
        message = light_message(local_mid, topic_bytes, qos, False, retain, local_payload, properties)
        message.timestamp = time.monotonic()
        info = message.info
        with paho._out_message_mutex:
            if paho._max_queued_messages > 0 and len(paho._out_messages) >= paho._max_queued_messages:
                info.rc = queue_size
                return info
            if local_mid in paho._out_messages:
                info.rc = queue_size
                return info
            paho._out_messages[local_mid] = message
            if paho._max_inflight_messages == 0 or paho._inflight_messages < paho._max_inflight_messages:
                paho._inflight_messages += 1
                message.state = waiting
                rc = paho._send_publish(local_mid, topic_bytes, local_payload, qos, retain, False, info, properties)
                if rc == no_conn:  # sent once a connection is made
                    paho._inflight_messages -= 1
                    message.state = publish_state
                info.rc = rc
                return info
            message.state = queued
            info.rc = ok
            return info

    paho.publish = publish  # type: ignore[method-assign]

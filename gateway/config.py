"""One validated, frozen settings object (SPEC §2): TOML file + `TELGATE_<SECTION>__<KEY>` env.

Unknown keys are an error naming the key; secrets are `SecretStr`, may come from `<key>_file`, and are
masked whenever the settings are printed.
"""

from __future__ import annotations

import contextvars
import re
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sip.numbers import PREFIX_PATTERN
from sip.transport import client_context
from sip.uri import check_target, check_text, check_user

_toml_path: contextvars.ContextVar[Path | None] = contextvars.ContextVar("telgate_toml", default=None)


class ConfigError(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class KeyError_(ValueError):
    """A refusal of one key, raised where pydantic knows only the section (a model validator): the error
    `load_settings` reports names `section.key`, not the section."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any) -> Any:
        """`password_file = "/run/secrets/x"` fills `password` from that file (trailing newline cut)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for key in list(out):
            if key.endswith("_file") and key[:-5] in cls.model_fields and _is_secret(key[:-5]):
                path = out.pop(key)
                if not path:  # a template left unfilled: not the same as leaving the key out
                    raise KeyError_(key, "names no file (leave the key out when there is no secret)")
                try:
                    text = Path(path).read_text().rstrip("\n")
                except (OSError, UnicodeDecodeError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                    raise KeyError_(key, f"cannot read {path}: {why}") from exc
                if not text.strip():
                    raise KeyError_(key, f"{path} is empty: a secret cannot be empty")
                out[key[:-5]] = text
        return out

    @model_validator(mode="after")
    def _no_empty_secret(self) -> Any:
        """A secret is left out or given; given empty (or blank) it is refused, required or not: an empty
        password or token is never what was meant — a secret that did not reach the file or the
        environment — and the gateway would otherwise run without it or fail at first use."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if _is_secret(name) and isinstance(value, SecretStr) and not value.get_secret_value().strip():
                raise KeyError_(name, "empty: a secret cannot be empty (leave the key out when there is none)")
        return self


def _is_secret(name: str) -> bool:
    return any(word in name for word in ("password", "token", "secret"))


class GatewaySection(_Section):
    # empty: made once and kept with the data dir (gateway/cluster/identity.py), so a redeploy keeps it
    id: str = Field("", pattern=r"^[A-Za-z0-9._:-]{0,128}$")
    data_dir: Path = Path("./var")
    default_region: str = Field("CZ", pattern=r"^[A-Z]{2}$")
    drain_timeout_s: float = Field(30.0, ge=0)
    # several instances on one store (SPEC §11): a dead instance's work is taken over within 2 x lease_s
    lease_s: float = Field(10.0, ge=1, le=300)


class StoreSection(_Section):
    url: str = "sqlite:///{data_dir}/telgate.db"
    retention_days: int = Field(30, ge=1)  # event history, command ids and wamids older than this are pruned


class BusSection(_Section):
    url: str = Field("mqtt://127.0.0.1:1883", pattern=r"^mqtts?://")
    username: str | None = None
    password: SecretStr | None = None
    topic_prefix: str = Field("telgate", pattern=r"^[A-Za-z0-9._/-]{1,64}$")
    shared_group: str = Field("telgate", pattern=r"^[A-Za-z0-9._-]{0,64}$")
    client_id: str = "telgate-{id}"
    ca_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    protocol: Literal[4, 5] = 5  # MQTT 5; 4 = MQTT 3.1.1 for brokers without 5 (no response topics, no $share)
    # MQTT 5 Receive Maximum: commands the broker may hand over before their PUBACK (each is acknowledged
    # after its commit); they are decided and committed together. The rest wait in the broker's queue.
    receive_maximum: int = Field(256, ge=1, le=65535)


class HttpSection(_Section):
    # the listener a load balancer may expose: the WhatsApp webhook and /healthz, and (without
    # admin_listen) the admin endpoints too — behind api_token when it is set
    listen: str = Field("127.0.0.1:8080", pattern=r"^.+:\d{1,5}$")
    # /readyz, /metrics and the contact read API (phone numbers, event history) on a listener of their own
    admin_listen: str | None = Field(None, pattern=r"^.+:\d{1,5}$")
    # a bearer token the admin endpoints require (`Authorization: Bearer …`), wherever they listen
    api_token: SecretStr | None = None
    max_body_bytes: int = Field(3 * 1024 * 1024, ge=1024)
    # hostile clients (docs/decisions.md "HTTP hostile input"): a connection that has not sent a whole
    # request head this long after it opened or after its previous response is closed (slow headers and
    # idle keep-alive alike; above the 60 s idle timeout of the usual load balancers, so that they close
    # first); a body that has not arrived this long after its head gets 408; beyond this many requests
    # in progress a listener answers 503 with Retry-After (/healthz excepted)
    idle_timeout_s: float = Field(75.0, gt=0, le=86400)
    read_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_concurrent_requests: int = Field(256, ge=1, le=100_000)


_HOSTPORT = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


class PbxEntry(BaseModel):
    """One PBX of several: where it is, its priority (lower goes first; equal ones share the calls) and, over
    TLS, the name its certificate must carry (empty: `sip.tls_server_name`, else the host of `address`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    address: str
    priority: int = Field(1, ge=0, le=1000)
    tls_server_name: str | None = None


ENTRY_KEYS = ("address", "priority", "tls_server_name")
# keys an admin may try per PBX that apply to every PBX of `sip` alike (for now): named in the error
_NOT_PER_PBX = ("transport", "ca_file", "cert_file", "key_file", "tls_ca_file", "tls_cert_file", "tls_key_file")
_SERVER_NAME = re.compile(r"^[A-Za-z0-9.:-]{1,253}$")


def _pbx_entries(value: Any) -> Any:
    """`pbx` as a list: strings in priority order, or tables `{address, priority}`; each address host[:port]."""
    if not isinstance(value, list):
        return value
    if not value:
        raise ValueError("an empty list: give one PBX address or several")
    out: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        entry: Any = {"address": item, "priority": index + 1} if isinstance(item, str) else item
        if not isinstance(entry, dict):
            raise ValueError(f'pbx[{index}]: a PBX is "host:port" or {{address = "host:port", priority = N}}')
        unknown = sorted(set(entry) - set(ENTRY_KEYS))
        for key in unknown:
            if key in _NOT_PER_PBX:
                raise ValueError(
                    f"pbx[{index}].{key}: not per PBX: sip.{key.removeprefix('tls_')} applies to every PBX "
                    "(a PBX entry has address, priority and tls_server_name)"
                )
        if unknown:
            raise ValueError(
                f"pbx[{index}].{unknown[0]}: unknown key (a PBX entry has address, priority and tls_server_name)"
            )
        address = entry.get("address")
        if not isinstance(address, str) or not _HOSTPORT.match(address):
            raise ValueError(f"pbx[{index}].address: {address!r} is not host:port")
        port = address.rpartition(":")[2] if ":" in address else "5060"
        if not 1 <= int(port) <= 65535:
            raise ValueError(f"pbx[{index}].address: port {port} is out of range")
        priority = entry.get("priority", 1)
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 1000:
            raise ValueError(f"pbx[{index}].priority: {priority!r} is not a whole number from 0 to 1000")
        server_name = entry.get("tls_server_name")
        if server_name is not None and (not isinstance(server_name, str) or not _SERVER_NAME.match(server_name)):
            raise ValueError(f"pbx[{index}].tls_server_name: {server_name!r} is not a host name")
        out.append({"address": address, "priority": priority, "tls_server_name": server_name or None})
    if len({e["address"] for e in out}) != len(out):
        raise ValueError("the same PBX address is listed twice")
    return out


class SipSection(_Section):
    enabled: bool | None = None
    # one `host:port`, or several: ["10.0.0.1:5060", "10.0.0.2:5060"] (priority by order) or
    # [{address = "10.0.0.1:5060", priority = 1}, ...] (lowest first, equal priorities round-robin)
    transport: Literal["udp", "tcp", "tls"] = "udp"  # before `pbx`: a PBX entry's keys are checked against it
    pbx: str | list[PbxEntry] | None = None
    dial_format: Literal["e164", "+e164", "national"] = "e164"  # the Request-URI user (sip/numbers.py)
    dial_prefix: str = Field("", pattern=PREFIX_PATTERN)  # in front of the dialled number: digits, * and #
    user_phone: bool = False  # `;user=phone` on the Request-URI and To
    assert_identity: bool = False  # P-Asserted-Identity with the caller ID (RFC 3325)
    # TLS (transport = "tls"): the CA that signs the PBX's certificate (empty = the system's CAs), our own
    # certificate if the PBX asks for one, and the name the PBX's certificate must carry (empty = the host
    # of `pbx`). SPEC §2 names them ca_file / cert_file / key_file; tls_ca_file etc. are accepted too.
    ca_file: Path | None = Field(None, validation_alias=AliasChoices("ca_file", "tls_ca_file"))
    cert_file: Path | None = Field(None, validation_alias=AliasChoices("cert_file", "tls_cert_file"))
    key_file: Path | None = Field(
        None, validation_alias=AliasChoices("key_file", "tls_key_file"), validate_default=True
    )
    tls_server_name: str | None = None
    tls_scheme: Literal["sips", "sip"] = "sips"  # "sip": sip:...;transport=tls URIs, for a PBX that cannot route sips:
    local: str = "0.0.0.0:5060"
    public_address: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    realm: str | None = None
    from_user: str = "telgate"
    from_display: str | None = None
    register_: bool = Field(False, alias="register")
    register_expires_s: int = Field(300, ge=30)
    allowed_sources: list[str] = []
    # OPTIONS keepalive to each PBX; 0 = none (Asterisk's qualify_frequency = 0): health from calls alone
    options_interval_s: float = Field(15.0, ge=0)
    max_concurrent_calls: int = Field(100, ge=1)
    max_cps: float = Field(10.0, gt=0)
    ring_timeout_s: float = Field(30.0, gt=0)
    session_expires_s: int = Field(1800, ge=90)  # RFC 4028: the Session-Expires every INVITE asks for
    connect_to: str = ""
    rtp_port: int = Field(0, ge=0, le=65535)  # the one RTP port of every call's SDP; 0 = chosen by the OS
    prompts_dir: str = "{data_dir}/prompts"  # where `dial.prompt` names an 8 kHz mono 16-bit WAV
    t1_ms: int = Field(500, ge=10, le=10_000)  # RFC 3261 T1: INVITE retransmits from T1, Timer B = 64 x T1

    _pbx = field_validator("pbx", mode="before")(_pbx_entries)

    @field_validator("connect_to", "from_user", "from_display")
    @classmethod
    def _wire_grammar(cls, value: str | None, info: ValidationInfo) -> str | None:
        """What goes into a SIP header, checked by its grammar at start (sip/uri.py), not when a call is
        placed or transferred."""
        if not value:
            return value
        check = {"connect_to": check_target, "from_user": check_user, "from_display": check_text}[info.field_name or ""]
        problem = check(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("pbx")
    @classmethod
    def _server_names_over_tls(cls, pbx: str | list[PbxEntry] | None, info: ValidationInfo) -> Any:
        """A PBX's tls_server_name means nothing without TLS: refused rather than silently ignored."""
        if info.data.get("transport", "tls") != "tls" and isinstance(pbx, list):
            for index, entry in enumerate(pbx):
                if entry.tls_server_name is not None:
                    raise ValueError(f'pbx[{index}].tls_server_name: only with transport = "tls"')
        return pbx

    @property
    def active(self) -> bool:
        return bool(self.pbx) if self.enabled is None else self.enabled and bool(self.pbx)

    @property
    def pbxs(self) -> list[PbxEntry]:
        """Every PBX, best first (a plain string is one PBX of priority 1)."""
        if not self.pbx:
            return []
        if isinstance(self.pbx, str):
            return [PbxEntry(address=self.pbx)]
        return sorted(self.pbx, key=lambda e: e.priority)

    @field_validator("ca_file")
    @classmethod
    def _ca_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            _readable(path)
            try:
                client_context(path)
            except ssl.SSLError as exc:
                raise ValueError(f"{path} holds no CA certificate in PEM ({exc.reason or exc})") from exc
        return path

    @field_validator("cert_file")
    @classmethod
    def _cert_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            _readable(path)
            try:  # parses the PEM certificates in it, whatever they are
                ssl.create_default_context(cafile=str(path))
            except ssl.SSLError as exc:
                raise ValueError(f"{path} holds no certificate in PEM ({exc.reason or exc})") from exc
        return path

    @field_validator("key_file")
    @classmethod
    def _key_goes_with_cert(cls, path: Path | None, info: ValidationInfo) -> Path | None:
        """The key of `cert_file`: in this file, or (empty) in `cert_file` itself."""
        if "cert_file" not in info.data:
            return path  # cert_file itself was refused; that is the error to report
        cert = info.data["cert_file"]
        if cert is None:
            if path is not None:
                raise ValueError("a key without sip.cert_file (the certificate it belongs to)")
            return path
        if path is not None:
            _readable(path)
        try:
            client_context(None, cert, path)
        except ssl.SSLError as exc:
            where = "" if path is not None else f" in {cert} (set sip.key_file when the key is in a file of its own)"
            raise ValueError(f"no private key of sip.cert_file{where}: {exc.reason or exc}") from exc
        return path


def _readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from exc


class WhatsappSection(_Section):
    enabled: bool | None = None
    api_base: str = "https://graph.facebook.com"
    api_version: str = "v21.0"
    phone_number_id: str | None = None
    access_token: SecretStr | None = None
    app_secret: SecretStr | None = None
    verify_token: SecretStr | None = None
    max_mps: float = Field(80.0, gt=0)
    request_timeout_s: float = Field(10.0, gt=0)
    ambiguous_timeout_s: float = Field(600.0, gt=0)

    @property
    def active(self) -> bool:
        return bool(self.phone_number_id) if self.enabled is None else self.enabled and bool(self.phone_number_id)

    @model_validator(mode="after")
    def _secrets_when_active(self) -> WhatsappSection:
        if self.active:
            for key in ("access_token", "app_secret", "verify_token"):
                if getattr(self, key) is None:
                    raise KeyError_(key, f"required (or {key}_file) when phone_number_id is set")
        return self


class InfluxSection(_Section):
    url: str = ""
    api: Literal["v1", "v2"] = "v1"
    database: str = "telgate"
    bucket: str = "telgate"
    org: str = ""
    token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    interval_s: float = Field(10.0, gt=0)


class MetricsSection(_Section):
    campaign_label: bool = True
    # how often the contacts-per-status gauges are read back from the store (SPEC §11: the same totals
    # on every instance, whoever made the transitions)
    contacts_refresh_s: float = Field(10.0, ge=0.5)


class RetrySection(_Section):
    max_attempts: int = Field(3, ge=1, le=100)
    delays_s: list[float] = [300.0, 900.0]
    retry_on: list[Literal["rejected", "unreachable", "failed"]] = ["rejected", "unreachable"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TELGATE_", env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    gateway: GatewaySection = GatewaySection()
    store: StoreSection = StoreSection()
    bus: BusSection = BusSection()
    http: HttpSection = HttpSection()
    sip: SipSection = SipSection()
    whatsapp: WhatsappSection = WhatsappSection()
    influx: InfluxSection = InfluxSection()
    metrics: MetricsSection = MetricsSection()
    retry: RetrySection = RetrySection()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))

    # derived values: placeholders filled from other keys
    @property
    def store_url(self) -> str:
        return self.store.url.replace("{data_dir}", str(self.gateway.data_dir))

    @property
    def prompts_dir(self) -> Path:
        return Path(self.sip.prompts_dir.replace("{data_dir}", str(self.gateway.data_dir)))

    @property
    def client_id(self) -> str:
        return self.bus.client_id.replace("{id}", self.gateway.id)

    def masked(self) -> dict[str, Any]:
        """The effective configuration with every secret shown as ********, and the credentials inside
        URLs (`postgresql://telgate:S3cret@db/telgate`, `?password=…`) as ***."""
        data: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        for section in data.values():
            for key, value in section.items():
                if _is_secret(key) and value is not None:
                    section[key] = "********"
                elif isinstance(value, str):
                    section[key] = mask_url(value)
        return data


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_SECRET = re.compile(r"(?i)([?&;](?:[^=&;#]*(?:password|passwd|pwd|token|secret|key)[^=&;#]*|p)=)[^&;#]*")


def _first(text: str, chars: str) -> int:
    return min((i for i in (text.find(c) for c in chars) if i >= 0), default=len(text))


def mask_url(text: str) -> str:
    """A URL with its password (user:***@host) and any secret-looking query parameter (`password=***`)
    masked; any other text as it is. The user name stays: it says which account is configured."""
    if not _URL.match(text):
        return text
    scheme, _, rest = text.partition("://")
    end = _first(rest, "/?#")
    if "@" not in rest[:end] and "@" in rest[: _first(rest, "?#")]:
        end = _first(rest, "?#")  # a password with a "/" in it, not percent-encoded: masked all the same
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostport = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.partition(':')[0]}:***@{hostport}"
    return f"{scheme}://{authority}{_QUERY_SECRET.sub(lambda m: m.group(1) + '***', tail)}"


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _toml_path.get()
        if path is None:
            return {}
        try:
            with path.open("rb") as fh:
                return tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read configuration: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"not valid TOML: {exc}") from exc


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load and validate; `ConfigError.key` names the offending key (e.g. `bus.url`)."""
    token = _toml_path.set(Path(path) if path else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc, msg = [str(p) for p in err["loc"]], err["msg"]
        cause = err.get("ctx", {}).get("error")
        if isinstance(cause, KeyError_):
            loc, msg = [*loc, cause.key], str(cause)
        raise ConfigError(".".join(loc) or "(root)", msg) from exc
    finally:
        _toml_path.reset(token)

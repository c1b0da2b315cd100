"""`telgate` command line (SPEC §1). Exit codes: 0 ok, 2 configuration error, 1 anything else."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path

from gateway.config import ConfigError, Settings, load_settings


def _settings(path: str | None) -> Settings:
    return load_settings(Path(path) if path else None)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway import logs
    from gateway.cluster.membership import ClusterError, LeaseLost
    from gateway.service.app import run_forever

    settings = _settings(args.config)
    logs.setup(args.log_level)
    code = 0
    try:
        run_forever(settings)
    except* ClusterError as group:
        print(f"telgate: {group.exceptions[0]}", file=sys.stderr)
        code = 2
    except* LeaseLost as group:  # its contacts were settled by another member: start again as a new one
        print(f"telgate: lease lost, stopping: {group.exceptions[0]}", file=sys.stderr)
        code = 75  # EX_TEMPFAIL: the supervisor starts it again (deploy/telgate@.service)
    return code


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    print(json.dumps(settings.masked(), indent=2, default=str))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Apply the store's schema migrations and exit (they also run when the service starts)."""
    from gateway.store import StoreError
    from gateway.store.migrate import migrate

    settings = _settings(args.config)
    try:
        applied = asyncio.run(migrate(settings.store_url))
    except StoreError as exc:
        print(f"telgate: store: {exc}", file=sys.stderr)
        return 1
    where = settings.store_url.split("://", 1)[0]
    print(f"migrations applied to the {where} store: {applied}" if applied else f"the {where} store is up to date")
    return 0


def cmd_dead_letters(args: argparse.Namespace) -> int:
    """`telgate dead-letters`: the outbox rows that could never be published (SPEC §3), newest first."""
    import base64
    from datetime import UTC, datetime

    from gateway.store import DeadLetter, Reads, StoreError, open_store

    if args.limit <= 0:
        raise ConfigError("--limit", "must be positive")
    settings = _settings(args.config)
    url = settings.store_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        print(f"telgate: no store at {url.removeprefix('sqlite:///')} (gateway.data_dir)", file=sys.stderr)
        return 1

    def newest(txn: Reads) -> list[DeadLetter]:
        return txn.dead_letters(args.limit)

    async def read() -> list[DeadLetter]:
        store = open_store(url)
        await store.open()
        try:
            return await store.read(newest)
        finally:
            await store.close()

    try:
        dead = asyncio.run(read())
    except StoreError as exc:
        print(f"telgate: store: {exc}", file=sys.stderr)
        return 1

    def when(ts: float) -> str:
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def text(raw: bytes) -> str:  # a payload as text when it is UTF-8, else base64
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode()

    if args.json:
        out = []
        for d in dead:
            row: dict[str, object] = {
                "id": d.id,
                "dead_at": when(d.dead_at),
                "created_at": when(d.created_at),
                "topic": d.topic.encode("utf-8", "backslashreplace").decode(),
                "reason": d.reason,
                "retain": d.retain,
                "part": d.part,
                "payload_bytes": len(d.payload),
            }
            if args.payload:
                row["payload"] = text(d.payload)
                row["correlation"] = None if d.correlation is None else base64.b64encode(d.correlation).decode()
            out.append(row)
        print(json.dumps(out, indent=2))
        return 0
    if not dead:
        print("no dead letters")
        return 0
    for d in dead:
        topic = d.topic.encode("utf-8", "backslashreplace").decode()
        print(f"{d.id}\t{when(d.dead_at)}\t{topic}\t{d.reason}")
        if args.payload:
            print(f"\t{text(d.payload)}")
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from gateway.contract.asyncapi import document

    print(json.dumps(document(args.prefix), indent=2))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import asyncio

    from gateway.tools.watch import watch

    settings = _settings(args.config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(settings, args.campaign, args.seconds))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """`telgate import FILE --campaign ID`: validate the whole file, then bulk commands through the window."""
    import asyncio
    import re

    import aiomqtt
    from rich.console import Console

    from gateway.contract.wire import ID_PATTERN
    from gateway.tools.importer import FileProblem, read_contacts, run_import
    from gateway.tools.submit import BusTarget

    if not re.match(ID_PATTERN, args.campaign):
        raise ConfigError("--campaign", f"a campaign id matches {ID_PATTERN}")
    template = None
    if args.channel == "whatsapp":
        for option, value in (("--template", args.template), ("--language", args.language)):
            if not value:
                raise ConfigError(option, "required with --channel whatsapp (the approved template to send)")
        template = {"name": args.template, "language": args.language}
    elif args.template or args.language:
        raise ConfigError("--template" if args.template else "--language", "only for --channel whatsapp")
    for option, number in (("--window", args.window), ("--retry-after", args.retry_after)):
        if number <= 0:
            raise ConfigError(option, "must be positive")
    bus: dict[str, str] = {}
    if args.broker:
        bus["url"] = args.broker
    if args.prefix:
        bus["topic_prefix"] = args.prefix
    settings = load_settings(Path(args.config) if args.config else None, **({"bus": bus} if bus else {}))
    path = Path(args.file)
    try:
        raw, rows = read_contacts(path, args.channel)
    except FileProblem as exc:
        print(f"telgate: {exc}; nothing was sent", file=sys.stderr)
        return 1
    console = Console(stderr=True)
    target = BusTarget.from_bus(settings.bus)
    give_up = args.give_up_after if args.give_up_after > 0 else None
    try:
        report = asyncio.run(
            run_import(
                path, raw, rows, target, args.campaign, args.channel, template, console,
                args.window, args.retry_after, give_up,
            )
        )  # fmt: skip
    except aiomqtt.MqttError as exc:
        print(f"telgate: cannot use the broker at {target.where}: {exc}; nothing was sent", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "telgate: import interrupted; run the same command again: what was imported is not imported twice",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print("\n".join(report.text()))
    return 0 if report.ok else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway.tools.demo import main as demo

    return demo(args.contacts, args.speed, args.json, args.broker)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="telgate", description="telgate: contact-status gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the service")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(fn=cmd_run)
    p = sub.add_parser("check-config", help="validate and print the effective configuration")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_check_config)
    p = sub.add_parser("migrate", help="apply the store's schema migrations and exit")
    p.add_argument("--config")
    p.set_defaults(fn=cmd_migrate)
    p = sub.add_parser("dead-letters", help="list the outbox rows that could never be published, newest first")
    p.add_argument("--config")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p.add_argument("--json", action="store_true", help="print them as a JSON array")
    p.add_argument("--payload", action="store_true", help="print each payload too (base64 when not UTF-8)")
    p.set_defaults(fn=cmd_dead_letters)
    p = sub.add_parser("asyncapi", help="print the AsyncAPI 3 document of the bus")
    p.add_argument("--prefix", default="telgate")
    p.set_defaults(fn=cmd_asyncapi)
    p = sub.add_parser("demo", help="a voice and a WhatsApp campaign against local simulators, live")
    p.add_argument("--contacts", type=int, default=40, help="contacts per campaign (default 40)")
    p.add_argument("--speed", type=float, default=2.0, help="time compression of rings, talk and retries")
    p.add_argument("--json", action="store_true", help="print the final figures as one JSON line")
    p.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "embedded"),
        default="auto",
        help="auto: a local mosquitto when installed, else the embedded amqtt (pip install 'telgate[demo]')",
    )
    p.set_defaults(fn=cmd_demo)
    p = sub.add_parser("import", help="a CSV or JSON-lines file of contacts into a campaign, as bulk commands")
    p.add_argument("file", help="CSV (header row: contact_id, phone, other columns into meta) or JSON lines")
    p.add_argument("--campaign", required=True, help="the campaign id")
    p.add_argument("--channel", choices=("voice", "whatsapp"), default="voice", help="dial (voice) or send (whatsapp)")
    p.add_argument("--template", help="WhatsApp: the approved template's name")
    p.add_argument("--language", help="WhatsApp: the template's language code (e.g. cs, en_US)")
    p.add_argument("--config", help="TOML configuration: the [bus] section is used (and TELGATE_BUS__* env)")
    p.add_argument("--broker", help="the broker's URL (mqtt://host:port, mqtts://…); overrides bus.url")
    p.add_argument("--prefix", help="the topic prefix; overrides bus.topic_prefix")
    p.add_argument("--window", type=int, default=8, help="bulk commands without a result at most (default 8)")
    p.add_argument("--retry-after", type=float, default=30.0, help="publish again after this many s (default 30)")
    p.add_argument(
        "--give-up-after", type=float, default=300.0, help="report a bulk unconfirmed after this many s (0: never)"
    )
    p.add_argument("--json", action="store_true", help="print the counts as one JSON line")
    p.set_defaults(fn=cmd_import)
    p = sub.add_parser("watch", help="live table of contacts per status, from the bus")
    p.add_argument("--config")
    p.add_argument("--campaign")
    p.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(fn=cmd_watch)
    args = parser.parse_args(argv)
    try:
        code: int = args.fn(args)
        return code
    except ConfigError as exc:
        print(f"telgate: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        print(f"telgate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

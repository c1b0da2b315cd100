"""`telgate` command line (SPEC §1). Exit codes: 0 ok, 2 configuration error, 1 anything else."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .config import ConfigError, Settings, load_settings


def _settings(path: str | None) -> Settings:
    return load_settings(Path(path) if path else None)


def cmd_run(args: argparse.Namespace) -> int:
    from . import logs
    from .app import run_forever

    settings = _settings(args.config)
    logs.setup(args.log_level)
    run_forever(settings)
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    print(json.dumps(settings.masked(), indent=2, default=str))
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from .asyncapi import document

    print(json.dumps(document(args.prefix), indent=2))
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    import asyncio

    from .watch import watch

    settings = _settings(args.config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(settings, args.campaign, args.seconds))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo

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

"""Who this instance is, kept with its data dir: a `gateway.id` that survives a redeploy, and the bus
sessions earlier ids of the same data dir left behind.

The host name was the default id, and it changes with every new container or pod. A gateway restarted
on the same data dir under a new id joined the command share group beside its own old persistent
session, and Mosquitto went on handing that offline session every other command, which waited an hour
and was dropped (issue 21: 10 of 20 commands answered). Now:
- the default id is made once (`gw-` and 12 random hex digits) and kept in `{data_dir}/gateway-id.json`;
  a configured `gateway.id` wins;
- when the id (or the bus client id) differs from the one the file records, the recorded session is an
  earlier one of this data dir: the app adopts it (takes what it holds, leaves the share group with it,
  ends it — what a cluster member does for a dead member) and settles what the earlier id left in
  flight (SPEC §9's restart rule). It stays in the file's `earlier` list until it is ended, so a crash
  in the middle of the adoption tries again at the next start.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config import Settings

FILE = "gateway-id.json"


@dataclass(frozen=True)
class Earlier:
    """An id this data dir ran under before, and the MQTT client id of the session it left."""

    gateway_id: str
    bus_client: str


def new_id() -> str:
    return f"gw-{secrets.token_hex(6)}"


def _read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise OSError(f"{path}: unreadable gateway identity ({exc}); remove it to make a new one") from exc
    return record if isinstance(record, dict) else {}


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(record, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def resolve(settings: Settings) -> tuple[Settings, tuple[Earlier, ...]]:
    """The settings with `gateway.id` filled in, and the earlier sessions of this data dir to adopt."""
    path = settings.gateway.data_dir / FILE
    record = _read(path)
    recorded = record.get("gateway_id")
    gateway_id = settings.gateway.id or (recorded if isinstance(recorded, str) and recorded else new_id())
    if gateway_id != settings.gateway.id:
        settings = settings.model_copy(update={"gateway": settings.gateway.model_copy(update={"id": gateway_id})})
    client = settings.client_id
    earlier = [
        Earlier(str(e.get("gateway_id", "")), str(e.get("bus_client", "")))
        for e in record.get("earlier", [])
        if isinstance(e, dict)
    ]
    previous = Earlier(str(recorded or ""), str(record.get("bus_client") or ""))
    if previous.bus_client and (previous.bus_client, previous.gateway_id) != (client, gateway_id):
        earlier.append(previous)
    earlier = [e for e in dict.fromkeys(earlier) if e.bus_client != client or e.gateway_id != gateway_id]
    _write(path, {"gateway_id": gateway_id, "bus_client": client, "earlier": [vars(e) for e in earlier]})
    return settings, tuple(earlier)


def forget(data_dir: Path, done: Earlier) -> None:
    """`done`'s session was ended and its work settled: it is no longer adopted at a start."""
    path = data_dir / FILE
    record = _read(path)
    record["earlier"] = [e for e in record.get("earlier", []) if e != vars(done)]
    _write(path, record)

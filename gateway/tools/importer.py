"""`telgate import`: a contact file into a campaign as bulk commands, through the command window.

1. The whole file is read and validated before anything is sent: a CSV (header row; `contact_id` and
   `phone` columns, every other column into `meta`) or JSON lines (one object per line: `contact_id`,
   `phone`, optional `meta` object, every other key into `meta`). Each contact is checked with the
   gateway's own model of a bulk entry; the first problem is reported with its line and column and
   nothing is sent. A malformed file is never half imported.
2. The contacts are cut into bulk `dial`/`send` commands of up to 1,000 contacts and 1 MiB, in file
   order. Each bulk's `command_id` is derived from the channel, the campaign, the SHA-256 of the file's
   bytes and the bulk's index: a second run of the same file publishes the same ids and the gateway
   answers them as duplicates, creating nothing ("already imported").
3. The bulks go through `gateway.tools.submit.CommandWindow` (SPEC §3's flow control). Contacts the gateway
   refuses are counted by code and listed with their line (a contact_id that appears twice in the file:
   the second is refused `contact_busy`); numbers it cannot read are accepted and end `invalid_record`.
4. A bulk without a result after the window gives up is reported with its line range, the import stops
   sending, and the command exits 1: nothing is unconfirmed without saying so.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gateway.contract.strict_json import loads as strict_json
from gateway.contract.wire import (
    MAX_BULK_CONTACTS,
    MAX_BULK_PAYLOAD_BYTES,
    CommandResult,
    DialEntry,
    SendEntry,
    field_path,
)
from gateway.tools.submit import BusTarget, CommandWindow, NoResult, encode

MAX_ASKS = 20  # a bulk refused as a whole in an earlier run is asked again under a new id, this many times


class FileProblem(Exception):
    """The file cannot be imported as it is: `line` (1-based) and `where` (a column or field) name the spot."""

    def __init__(self, path: Path, line: int | None, where: str | None, message: str) -> None:
        spot = ", ".join(p for p in (f"line {line}" if line else None, where) if p)
        super().__init__(f"{path}{': ' + spot if spot else ''}: {message}")
        self.line = line
        self.where = where


@dataclass(frozen=True, slots=True)
class Row:
    line: int  # where the record starts
    end_line: int  # where it ends (a quoted CSV field may span lines)
    entry: dict[str, Any]  # {"contact_id", "phone"[, "meta"]}: one element of a bulk's `contacts`


@dataclass(frozen=True)
class Chunk:
    index: int  # 1-based, in file order
    rows: tuple[Row, ...]
    id_base: str

    def command_id(self, ask: int = 1) -> str:
        return f"{self.id_base}:{self.index}" + (f":{ask}" if ask > 1 else "")

    @property
    def lines(self) -> str:
        first, last = self.rows[0].line, self.rows[-1].end_line
        return f"line {first}" if first == last else f"lines {first}-{last}"


# -- reading -----------------------------------------------------------------------------------------
def read_contacts(path: Path, channel: str = "voice") -> tuple[bytes, list[Row]]:
    """The file's bytes and its contacts, validated; `FileProblem` names the first thing wrong."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileProblem(path, None, None, f"cannot read the file: {exc.strerror}") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise FileProblem(path, line, None, "not UTF-8 text") from exc
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson") or (
        path.suffix.lower() != ".csv" and text.lstrip().startswith("{")
    )
    rows = _read_jsonl(path, text) if jsonl else _read_csv(path, text)
    if not rows:
        raise FileProblem(path, None, None, "no contacts in the file")
    model = DialEntry if channel == "voice" else SendEntry
    for row in rows:
        try:
            model.model_validate(row.entry)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = field_path(err["loc"]) or "?"
            where = (
                "the columns other than contact_id and phone (meta)"
                if name.startswith("meta") and not jsonl
                else f"{'field' if jsonl else 'column'} {name}"
            )
            value = row.entry.get(name)
            shown = f" ({value!r})" if isinstance(value, str) and len(value) <= 80 else ""
            raise FileProblem(path, row.line, where, f"{err['msg']}{shown}") from exc
    return raw, rows


def _read_csv(path: Path, text: str) -> list[Row]:
    header_line = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=header_line.count) if any(d in header_line for d in ",;\t") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return []
    except csv.Error as exc:
        raise FileProblem(path, reader.line_num, None, f"not CSV: {exc}") from exc
    names = {h.lower(): i for i, h in reversed(list(enumerate(header)))}
    for required in ("contact_id", "phone"):
        if required not in names:
            raise FileProblem(
                path, 1, f"column {required}", f"the header has no `{required}` column (it has: {', '.join(header)})"
            )
    seen: set[str] = set()
    for h in header:
        if not h:
            raise FileProblem(path, 1, None, "the header has a column without a name")
        if h.lower() in seen:
            raise FileProblem(path, 1, f"column {h}", "the header names this column twice")
        seen.add(h.lower())
    id_at, phone_at = names["contact_id"], names["phone"]
    meta_at = [(i, h) for i, h in enumerate(header) if i not in (id_at, phone_at)]
    rows: list[Row] = []
    start = reader.line_num + 1
    try:
        for record in reader:
            if not record or record == [""]:  # a blank line
                start = reader.line_num + 1
                continue
            if len(record) != len(header):
                raise FileProblem(
                    path,
                    start,
                    None,
                    f"{len(record)} fields, the header has {len(header)} (separated by {delimiter!r}:"
                    f" {', '.join(header)})",
                )
            entry: dict[str, Any] = {"contact_id": record[id_at].strip(), "phone": record[phone_at].strip()}
            if meta_at:
                entry["meta"] = {h: record[i] for i, h in meta_at}
            rows.append(Row(start, reader.line_num, entry))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise FileProblem(path, reader.line_num, None, f"not valid CSV: {exc}") from exc
    return rows


def _read_jsonl(path: Path, text: str) -> list[Row]:
    rows: list[Row] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = strict_json(line)
        except ValueError as exc:  # NotJson: what the gateway would refuse the whole bulk for, named
            raise FileProblem(path, number, None, f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise FileProblem(path, number, None, "a line must be one JSON object")
        entry: dict[str, Any] = {}
        for key in ("contact_id", "phone"):
            value = data.pop(key, None)
            if value is None:
                raise FileProblem(path, number, f"field {key}", "missing")
            if not isinstance(value, str):
                hint = " (write the number as a string: a JSON number loses its + and leading zeros)"
                raise FileProblem(
                    path, number, f"field {key}", f"must be a string{hint if key == 'phone' else ''}, not {value!r}"
                )
            entry[key] = value.strip()
        meta = data.pop("meta", None)
        if meta is not None and not isinstance(meta, dict):
            raise FileProblem(path, number, "field meta", "must be an object")
        meta = dict(meta or {})
        for key, value in data.items():
            if key in meta:
                raise FileProblem(path, number, f"field {key}", "given both at the top level and in meta")
            meta[key] = value
        if meta:
            entry["meta"] = meta
        rows.append(Row(number, number, entry))
    return rows


# -- planning ----------------------------------------------------------------------------------------
def id_base(raw: bytes, kind: str, campaign: str) -> str:
    """What every bulk of this import is named after: the same file into the same campaign, same ids."""
    content = hashlib.sha256(raw).hexdigest()
    return "import:" + hashlib.sha256(f"telgate-import/1\n{kind}\n{campaign}\n{content}".encode()).hexdigest()[:24]


def plan(rows: list[Row], shared: dict[str, Any], base: str) -> list[Chunk]:
    """Cut `rows` into bulks of at most 1,000 contacts whose payload stays within 1 MiB."""
    overhead = len(encode({**shared, "command_id": "x" * 128, "contacts": []}))
    budget = MAX_BULK_PAYLOAD_BYTES - overhead
    chunks: list[Chunk] = []
    current: list[Row] = []
    size = 0
    for row in rows:
        n = len(encode(row.entry)) + (1 if current else 0)
        if current and (len(current) >= MAX_BULK_CONTACTS or size + n > budget):
            chunks.append(Chunk(len(chunks) + 1, tuple(current), base))
            current, size, n = [], 0, n - 1
        current.append(row)
        size += n
    if current:
        chunks.append(Chunk(len(chunks) + 1, tuple(current), base))
    return chunks


# -- the report --------------------------------------------------------------------------------------
@dataclass
class Report:
    file: str
    campaign: str
    channel: str
    contacts: int = 0
    commands: int = 0
    accepted: int = 0  # contacts created by this run
    invalid: int = 0  # of them, with a number the gateway could not read (they end invalid_record)
    refused: Counter[str] = field(default_factory=Counter)  # code → contacts refused in this run
    already_imported: int = 0  # contacts an earlier run created (their bulks were answered `duplicate`)
    already_refused: Counter[str] = field(default_factory=Counter)
    refusals: list[dict[str, Any]] = field(default_factory=list)  # line, contact_id, code, message
    whole: list[dict[str, Any]] = field(default_factory=list)  # bulks refused as a whole
    unconfirmed: list[dict[str, Any]] = field(default_factory=list)  # bulks without a result
    not_sent: list[Chunk] = field(default_factory=list)
    republished: int = 0
    seconds: float = 0.0
    first_line: dict[str, int] = field(default_factory=dict, repr=False)  # contact_id → its first line

    @property
    def ok(self) -> bool:
        return not (self.unconfirmed or self.not_sent or self.whole)

    def take(self, chunk: Chunk, result: CommandResult) -> None:
        if not result.accepted:
            err = result.error
            code = err.code if err else "refused"
            self.refused[code] += len(chunk.rows)
            self.whole.append(
                {
                    "chunk": chunk.index,
                    "lines": chunk.lines,
                    "command_id": result.command_id,
                    "code": code,
                    "field": err.field if err else None,
                    "message": err.message if err else "",
                }
            )
            return
        refused = result.contacts_refused or []
        if result.duplicate:
            self.already_imported += result.contacts_accepted or 0
            self.already_refused.update(r.code for r in refused)
            return
        self.accepted += result.contacts_accepted or 0
        self.invalid += result.contacts_invalid or 0
        for r in refused:
            self.refused[r.code] += 1
            line = _line_of(chunk, r.field, r.contact_id)
            refusal: dict[str, Any] = {"line": line, "contact_id": r.contact_id, "code": r.code, "message": r.message}
            first = self.first_line.get(r.contact_id, line)
            if first < line:  # the file names this contact twice: the gateway took the first one
                refusal["first_line"] = first
            self.refusals.append(refusal)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "campaign": self.campaign,
            "channel": self.channel,
            "contacts": self.contacts,
            "commands": self.commands,
            "accepted": self.accepted,
            "invalid": self.invalid,
            "refused": dict(sorted(self.refused.items())),
            "already_imported": self.already_imported,
            "already_refused": dict(sorted(self.already_refused.items())),
            "refusals": self.refusals,
            "refused_commands": self.whole,
            "unconfirmed": self.unconfirmed,
            "not_sent": [{"chunk": c.index, "lines": c.lines} for c in self.not_sent],
            "republished": self.republished,
            "seconds": round(self.seconds, 1),
            "ok": self.ok,
        }

    def text(self, examples: int = 20) -> list[str]:
        refused = sum(self.refused.values())
        by_code = ", ".join(f"{code} {n:,}" for code, n in sorted(self.refused.items()))
        out = [
            f"{self.file} → campaign {self.campaign} ({self.channel}): {self.contacts:,} contacts in "
            f"{self.commands:,} bulk commands, {self.seconds:.1f} s",
            f"  accepted          {self.accepted:>9,}"
            + (f"   ({self.invalid:,} with an invalid number: they end invalid_record)" if self.invalid else ""),
            f"  refused           {refused:>9,}" + (f"   {by_code}" if by_code else ""),
            f"  already imported  {self.already_imported:>9,}"
            + ("   (by an earlier run of this file: nothing was created again" if self.already_imported else "")
            + (
                "; refused then: " + ", ".join(f"{c} {n:,}" for c, n in sorted(self.already_refused.items()))
                if self.already_refused
                else ""
            )
            + (")" if self.already_imported else ""),
        ]
        if self.refusals:
            out.append("refused contacts:")
            for r in self.refusals[:examples]:
                said = "" if r["message"].endswith(r["code"]) else f": {r['message']}"  # more than the code
                again = f" (the same contact_id is on line {r['first_line']})" if "first_line" in r else ""
                out.append(f"  line {r['line']}  contact_id {r['contact_id']}  {r['code']}{said}{again}")
            if len(self.refusals) > examples:
                out.append(f"  … and {len(self.refusals) - examples:,} more (--json lists them all)")
        for w in self.whole:
            where = f" ({w['field']})" if w["field"] else ""
            out.append(f"REFUSED as a whole: bulk {w['chunk']} ({w['lines']}): {w['code']}{where}: {w['message']}")
        if self.unconfirmed:
            out.append(
                f"NOT CONFIRMED: {len(self.unconfirmed)} bulk command(s) got no result from the gateway "
                "(each may or may not have been applied):"
            )
            for u in self.unconfirmed:
                out.append(f"  bulk {u['chunk']} ({u['lines']}): {u['reason']}")
        if self.not_sent:
            first, last = self.not_sent[0], self.not_sent[-1]
            span = f"{first.rows[0].line}-{last.rows[-1].end_line}"
            out.append(
                f"NOT SENT: {len(self.not_sent)} bulk command(s), lines {span} "
                "(the import stopped when the gateway stopped answering)"
            )
        if not self.ok:
            out.append("Run the same command again: what was imported is not imported twice.")
        return out


def _line_of(chunk: Chunk, where: str | None, contact_id: str) -> int:
    """The file line of a refused contact: `contacts[516].contact_id` → the 517th row of the bulk."""
    if where and where.startswith("contacts["):
        index = int(where[len("contacts[") : where.index("]")])
        if 0 <= index < len(chunk.rows):
            return chunk.rows[index].line
    return next((r.line for r in chunk.rows if r.entry["contact_id"] == contact_id), chunk.rows[0].line)


# -- sending -----------------------------------------------------------------------------------------
async def run_import(
    path: Path,
    raw: bytes,
    rows: list[Row],
    target: BusTarget,
    campaign: str,
    channel: str,
    template: dict[str, Any] | None = None,
    console: Console | None = None,
    window: int = 8,
    retry_after_s: float = 30.0,
    give_up_after_s: float | None = 300.0,
) -> Report:
    """Send validated `rows` as bulk commands and count what the gateway answered."""
    started = time.monotonic()
    kind = "dial" if channel == "voice" else "send"
    shared: dict[str, Any] = {"campaign_id": campaign}
    if template is not None:
        shared["template"] = template
    chunks = plan(rows, shared, id_base(raw, kind, campaign))
    report = Report(str(path), campaign, channel, contacts=len(rows), commands=len(chunks))
    for row in reversed(rows):
        report.first_line[row.entry["contact_id"]] = row.line
    console = console or Console(stderr=True)
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("contacts"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    bar = progress.add_task("import", total=len(rows))
    stalled = asyncio.Event()

    async def settle(cw: CommandWindow, chunk: Chunk, future: asyncio.Future[CommandResult]) -> None:
        ask = 1
        try:
            while True:
                result = await future
                if result.accepted or not result.duplicate or ask >= MAX_ASKS:
                    break
                # refused as a whole in an earlier run (say, the channel was off then): ask again under
                # the next id of this bulk, so a later run that succeeds is itself answered `duplicate`
                ask += 1
                body = {**shared, "command_id": chunk.command_id(ask), "contacts": [r.entry for r in chunk.rows]}
                future = await cw.submit(kind, body)
        except NoResult as exc:
            stalled.set()
            report.unconfirmed.append({"chunk": chunk.index, "lines": chunk.lines, "reason": str(exc)})
        else:
            report.take(chunk, result)
        progress.advance(bar, len(chunk.rows))

    async with CommandWindow(target, size=window, retry_after_s=retry_after_s, give_up_after_s=give_up_after_s) as cw:
        with progress:
            async with asyncio.TaskGroup() as tg:
                for position, chunk in enumerate(chunks):
                    await cw.room()
                    if stalled.is_set():
                        report.not_sent = chunks[position:]
                        break
                    body = {**shared, "command_id": chunk.command_id(), "contacts": [r.entry for r in chunk.rows]}
                    future = await cw.submit(kind, body)
                    tg.create_task(settle(cw, chunk, future), name=f"import-bulk-{chunk.index}")
        report.republished = cw.republished
    report.unconfirmed.sort(key=lambda u: int(u["chunk"]))
    report.seconds = time.monotonic() - started
    return report

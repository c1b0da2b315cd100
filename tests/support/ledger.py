"""The wire ledger (SPEC §9, issue 10): what the peers received, compared with the events, contact by contact.

A test that drives a peer (SIPp, the PBX simulator, Kamailio, the Cloud API stand-in, the scripted port)
reads the peer's own record of what reached it and checks it against the contact events the backend got:
- voice: INVITEs with distinct Call-IDs per dialled number = the attempts in the events of the contacts
  with that number (an attempt is an event entering `calling`, numbered by `attempt`);
- WhatsApp: Cloud API sends per contact (its `biz_opaque_callback_data`) = the attempts entering
  `in_progress`;
- an attempt a crash cut off (the restart rule's `gateway_restart` event follows its `calling` /
  `in_progress` directly) counts 0 or 1: the process may have died between the commit and the INVITE
  or send (docs/decisions.md, "An attempt cut off by a crash"); every other attempt counts exactly 1;
- zero for every contact whose events show no attempt — in particular those that end `blacklisted`,
  `plan_limit_exceeded`, `invalid_record`, `rejected_by_operator`, or `canceled_by_admin` / `removed`
  before a dial;
- a 301/302 followed is one attempt with two INVITEs: the second keeps the Call-ID (RFC 3261 §8.1.3.4)
  and goes to the Contact, so it is not counted as an attempt but as a *redirected* INVITE
  (`redirects_in`), per number of the attempt it belongs to; when a test passes `redirected`, those must
  equal the attempts whose events carry `signal.redirect`.

Events reach the backend a moment after the peer saw the INVITE (the event is published after the
commit, the INVITE is sent after the commit too), so `check` waits for the two to agree and, if they do
not within its patience, fails with the contacts that disagree. Every call returns the numbers it compared,
so a test can assert that the ledger was not empty.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Key = tuple[str, str]
CONTACTING = {"voice": "calling", "whatsapp": "in_progress"}
NOT_CONTACTED = frozenset(
    {"blacklisted", "plan_limit_exceeded", "invalid_record", "rejected_by_operator", "canceled_by_admin", "removed"}
)


class HasEvents(Protocol):
    by_contact: dict[Key, list[dict[str, Any]]]


def digits(number: str) -> str:
    """The dialled number as the wire has it: its digits (a Request-URI user, a Cloud API `to`)."""
    return re.sub(r"\D", "", number)


@dataclass
class ContactRecord:
    channel: str
    phone: str
    attempts: set[int] = field(default_factory=set)
    statuses: list[str] = field(default_factory=list)
    redirected: set[int] = field(default_factory=set)  # attempts whose events carry `signal.redirect`
    # attempts a crash cut off between their commit and their INVITE or send (docs/decisions.md): the
    # restart rule's event follows the contacting status directly, so the peer got 0 or 1 of them
    cut: set[int] = field(default_factory=set)


def contacts(backend: HasEvents, channel: str) -> dict[Key, ContactRecord]:
    """Per contact of `channel`: its number, the attempts its events started, its statuses in order."""
    out: dict[Key, ContactRecord] = {}
    for key, events in list(backend.by_contact.items()):
        unique = sorted({e["event_id"]: e for e in events}.values(), key=lambda e: e["sequence"])
        if not unique or unique[0]["channel"] != channel:
            continue
        rec = ContactRecord(channel, unique[0].get("phone") or "")
        for before, e in zip([None, *unique], unique, strict=False):
            rec.statuses.append(e["status"])
            if e["status"] == CONTACTING[channel]:
                rec.attempts.add(int(e["attempt"]))
            if (e.get("signal") or {}).get("redirect"):
                rec.redirected.add(int(e["attempt"]))
            if (
                before is not None
                and before["status"] == CONTACTING[channel]
                and (e.get("signal") or {}).get("kind") == "gateway_restart"
            ):
                rec.cut.add(int(before["attempt"]))
        out[key] = rec
    return out


@dataclass
class Comparison:
    compared: int  # contacts compared
    attempts: int  # attempts seen in the events (= contacts with the number on the wire)
    wire: int  # what the peer recorded in all
    mismatches: list[str]
    redirected: int = 0  # redirected INVITEs the peer recorded (when the test compared them)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def compare(
    backend: HasEvents,
    channel: str,
    wire: Counter[Any],
    by: str,
    dialled: Callable[[str], str] = digits,
    redirected: Counter[str] | None = None,
) -> Comparison:
    """`wire` counts what the peer received, keyed by number digits (`by="number"`) or contact key.
    `dialled` maps an event's phone to the key the peer's record has for it (a trunk's dial string);
    `redirected` the redirected INVITEs per number (voice), compared with the attempts that say so."""
    recs = contacts(backend, channel)
    expected: Counter[Any] = Counter()
    cut: Counter[Any] = Counter()  # of those, attempts a crash cut off: on the wire at most once
    owners: dict[Any, list[Key]] = {}
    mismatches = []
    for key, rec in recs.items():
        k: Any = dialled(rec.phone) if by == "number" else key
        expected[k] += len(rec.attempts)
        cut[k] += len(rec.cut)
        owners.setdefault(k, []).append(key)
        if len(rec.attempts) != (max(rec.attempts) if rec.attempts else 0):  # attempts are 1, 2, …, n
            mismatches.append(f"{key}: the events skip an attempt: {sorted(rec.attempts)}")
    for k in sorted(set(expected) | set(wire), key=str):
        if not expected[k] - cut[k] <= wire[k] <= expected[k]:
            who = {f"{c[0]}/{c[1]}": recs[c].statuses for c in owners.get(k, [])}
            said = f"{expected[k]} attempt(s)" + (f", {cut[k]} of them cut off by a crash" if cut[k] else "")
            mismatches.append(f"{k}: events say {said}, the peer received {wire[k]}; {who}")
    for key, rec in recs.items():  # said explicitly: not contacted means nothing on the wire
        k = dialled(rec.phone) if by == "number" else key
        if rec.statuses and rec.statuses[-1] in NOT_CONTACTED and not rec.attempts and wire[k] and len(owners[k]) == 1:
            mismatches.append(f"{key}: ends {rec.statuses[-1]} without an attempt, yet the peer received {wire[k]}")
    if redirected is not None:
        said: Counter[str] = Counter()
        for rec in recs.values():
            said[dialled(rec.phone)] += len(rec.redirected)
        for k in sorted(set(said) | set(redirected)):
            if said[k] != redirected[k]:
                mismatches.append(f"{k}: events say {said[k]} redirected attempt(s), the peer received {redirected[k]}")
    total = sum(redirected.values()) if redirected is not None else 0
    attempts = sum(len(r.attempts) for r in recs.values())
    return Comparison(len(recs), attempts, sum(wire.values()), mismatches, total)


async def check(
    backend: HasEvents,
    channel: str,
    wire: Callable[[], Counter[Any]],
    by: str = "number",
    patience_s: float = 10.0,
    dialled: Callable[[str], str] = digits,
    redirected: Callable[[], Counter[str]] | None = None,
) -> Comparison:
    """Wait until the peer's record and the events agree contact by contact; fail naming who disagrees."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    while True:
        result = compare(backend, channel, wire(), by, dialled, redirected() if redirected is not None else None)
        if result.ok:
            return result
        if loop.time() >= deadline:
            raise AssertionError(
                "wire ledger: the peer's record and the events disagree:\n" + "\n".join(result.mismatches)
            )
        await asyncio.sleep(0.05)


# -- what each peer recorded ------------------------------------------------------------------------------

_REQUEST_LINE = re.compile(r"^INVITE sips?:(?P<user>[^@;>\s]+)@", re.MULTILINE)
_REQUEST_URI = re.compile(r"^INVITE (?P<uri>sips?:\S+) SIP/2\.0", re.MULTILINE)
_CALL_ID = re.compile(r"^(?:Call-ID|i)\s*:\s*(?P<id>\S+)", re.MULTILINE | re.IGNORECASE)
_TO_TAG = re.compile(r"^(?:To|t)\s*:.*;\s*tag=", re.MULTILINE | re.IGNORECASE)


def invites_in(messages: Iterable[str], key: Callable[[str], str] = digits) -> Counter[str]:
    """Initial INVITEs (no To tag) with distinct Call-IDs, per Request-URI user's digits (or `key` of it)."""
    seen: set[str] = set()
    out: Counter[str] = Counter()
    for text in messages:
        line = _REQUEST_LINE.search(text)
        call_id = _CALL_ID.search(text)
        if line is None or call_id is None or _TO_TAG.search(text) or call_id["id"] in seen:
            continue
        seen.add(call_id["id"])
        out[key(line["user"])] += 1
    return out


def redirects_in(messages: Iterable[str]) -> Counter[str]:
    """Redirected INVITEs: initial INVITEs (no To tag) that repeat an earlier INVITE's Call-ID with another
    Request-URI — the INVITE after a 301/302 — per the number of the attempt's first INVITE."""
    first: dict[str, tuple[str, str]] = {}  # Call-ID -> (Request-URI, its user's digits)
    out: Counter[str] = Counter()
    for text in messages:
        line = _REQUEST_URI.search(text)
        call_id = _CALL_ID.search(text)
        if line is None or call_id is None or _TO_TAG.search(text):
            continue
        seen = first.get(call_id["id"])
        if seen is None:
            first[call_id["id"]] = (line["uri"], digits(line["uri"].split("@")[0]))
        elif seen[0] != line["uri"]:
            first[call_id["id"]] = (line["uri"], seen[1])
            out[seen[1]] += 1
    return out


class SippLike(Protocol):
    def messages(self) -> list[str]: ...


def sipp_invites(*peers: SippLike, key: Callable[[str], str] = digits) -> Callable[[], Counter[str]]:
    """The INVITEs SIPp logged (every Sipp in tests runs with -trace_msg), across all `peers`."""

    def read() -> Counter[str]:  # one Call-ID is one attempt even when its INVITEs reached two peers
        return invites_in([m for p in peers for m in p.messages()], key)

    return read


_KAMAILIO_INVITE = re.compile(r"telgate-test: initial INVITE (?P<call_id>\S+) from (?P<from>\S+) to (?P<to>\S+)")


def kamailio_invites(*logs: Path, from_user: str = "telgate") -> Callable[[], Counter[str]]:
    """The initial INVITEs Kamailio received from telgate (tests/pbx/kamailio.cfg logs each one), across the
    logs of every Kamailio given (several PBXs)."""

    def read() -> Counter[str]:
        seen: dict[str, str] = {}
        for log in logs:
            for m in _KAMAILIO_INVITE.finditer(log.read_text(errors="replace") if log.exists() else ""):
                if m["from"] == from_user:
                    seen.setdefault(m["call_id"], digits(m["to"]))
        return Counter(seen.values())

    return read


_KAMAILIO_IN_DIALOG = re.compile(r"telgate-test: in-dialog (?P<method>\S+) (?P<call_id>\S+) over")


def kamailio_requests(log: Path) -> dict[str, list[str]]:
    """Per Call-ID, the methods one Kamailio received, in order: `INVITE` for an initial one (its digest
    retry again), then the call's other requests (ACK, CANCEL, BYE, a re-INVITE, UPDATE, REFER)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if (m := _KAMAILIO_INVITE.search(line)) is not None:
            out.setdefault(m["call_id"], []).append("INVITE")
        elif (d := _KAMAILIO_IN_DIALOG.search(line)) is not None:
            out.setdefault(d["call_id"], []).append(d["method"])
    return out


def sipp_redirects(*peers: SippLike) -> Callable[[], Counter[str]]:
    """The redirected INVITEs SIPp logged, across the peers (one attempt may reach two of them)."""

    def read() -> Counter[str]:
        return redirects_in([m for p in peers for m in p.messages()])

    return read


class SentLike(Protocol):
    callback_data: str | None
    to: str


def standin_sends(sent: list[Any]) -> Callable[[], Counter[Key]]:
    """Cloud API sends per contact, read from the `biz_opaque_callback_data` the stand-in received."""

    def read() -> Counter[Key]:
        out: Counter[Key] = Counter()
        for s in list(sent):
            campaign, contact, _attempt = (s.callback_data or "//").rsplit("/", 2)
            out[(campaign, contact)] += 1
        return out

    return read


def scripted_started(started: list[tuple[str, str, int]]) -> Callable[[], Counter[Key]]:
    """The scripted port's record of the dials/sends it carried out."""
    return lambda: Counter((c, k) for c, k, _a in list(started))


def scripted_file(path: Path) -> Callable[[], Counter[Key]]:
    """The record a scripted port in another process appends to (tests.support.run_scripted RECORD)."""

    def read() -> Counter[Key]:
        lines = path.read_text().splitlines() if path.exists() else []
        return Counter((c, k) for c, k, _a in (line.split(" ") for line in lines))

    return read

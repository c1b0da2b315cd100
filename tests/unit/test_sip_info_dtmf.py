"""SIP INFO DTMF (docs/voice.md §6.4): an in-dialog INFO carrying a key is answered 200 and told to the
owner as `DtmfPressed`; a DTMF body that cannot be read is answered 400; any other INFO is 200 as before."""

from __future__ import annotations

import pytest

from sip.call import Call, DtmfPressed, Response
from sip.message import Request, parse
from tests.unit.test_sip_call import new_call, reply, sent


def _answered() -> tuple[Call, Response]:
    call, invite = new_call()
    ok = reply(invite, 200, "OK", Contact="<sip:bob@10.0.0.9>")
    call.receive(ok, 0.5)
    return call, ok


def _info(ok: Response, body: bytes, content_type: str | None, number: int = 7) -> Request:
    h = ok.headers.without("contact").replace("CSeq", f"{number} INFO")
    if content_type is not None:
        h = h.with_("Content-Type", content_type)
    return parse(Request("INFO", "sip:telgate@127.0.0.1:5070", h, body).encode())  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("content_type", "body", "digit", "duration"),
    [
        ("application/dtmf-relay", b"Signal=1\r\nDuration=160\r\n", "1", 160),
        ("application/dtmf-relay", b"signal= 9\r\n", "9", None),
        ("Application/DTMF-Relay; charset=utf-8", b"Signal=11\r\nDuration=250\r\n", "#", 250),
        ("application/dtmf", b"5", "5", None),
    ],
)
def test_an_info_with_a_key_is_answered_200_and_told(
    content_type: str, body: bytes, digit: str, duration: int | None
) -> None:
    call, ok = _answered()
    events = call.receive(_info(ok, body, content_type), 1.0)
    (response,) = sent(events)
    assert isinstance(response, Response) and response.status == 200
    assert [e for e in events if isinstance(e, DtmfPressed)] == [DtmfPressed(digit, duration)]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/dtmf-relay", b"Signal=x\r\n"),
        ("application/dtmf-relay", b"Duration=160\r\n"),
        ("application/dtmf-relay", b"Signal=1\r\nDuration=long\r\n"),
        ("application/dtmf-relay", b"no equals sign"),
        ("application/dtmf", b"12"),
        ("application/dtmf", b"\xff"),
    ],
)
def test_an_unreadable_dtmf_body_is_answered_400(content_type: str, body: bytes) -> None:
    call, ok = _answered()
    events = call.receive(_info(ok, body, content_type), 1.0)
    (response,) = sent(events)
    assert isinstance(response, Response) and response.status == 400
    assert not [e for e in events if isinstance(e, DtmfPressed)]
    assert call.phase == "confirmed"  # the call goes on


@pytest.mark.parametrize(("content_type", "body"), [(None, b""), ("application/x-app", b"anything")])
def test_other_info_stays_200(content_type: str | None, body: bytes) -> None:
    call, ok = _answered()
    events = call.receive(_info(ok, body, content_type), 1.0)
    (response,) = sent(events)
    assert isinstance(response, Response) and response.status == 200
    assert not [e for e in events if isinstance(e, DtmfPressed)]


def test_a_key_before_the_answer_or_after_our_bye_is_answered_but_not_told() -> None:
    call, ok = _answered()
    call.hangup(2.0)
    events = call.receive(_info(ok, b"Signal=1\r\n", "application/dtmf-relay"), 2.1)
    (response,) = sent(events)
    assert isinstance(response, Response) and response.status == 200
    assert not [e for e in events if isinstance(e, DtmfPressed)]

"""The pure parts of the HTTP edge (issue 21): secrets compared as bytes whatever a client sent, the
masking of tracebacks, and the filter that keeps a client's fault out of the error log."""

from __future__ import annotations

import logging
import sys

from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError
from hypothesis import given
from hypothesis import strategies as st

from gateway.service.http import ClientFaults, masked, masked_traceback, server_log
from whatsapp.webhook import raw, signature, signature_ok

SECRET = b"app-secret"


@given(st.text())
def test_any_header_text_is_bytes_and_never_a_valid_signature(text: str) -> None:
    body = b'{"object":"whatsapp_business_account"}'
    assert isinstance(raw(text), bytes)  # lone surrogates included: never an encoding error
    assert signature_ok(SECRET, body, text) == (text.strip() == signature(SECRET, body))


def test_non_utf8_and_non_ascii_signatures_are_wrong_not_errors() -> None:
    body = b"{}"
    good = signature(SECRET, body)
    as_aiohttp_decodes = b"sha256=\xff\xfe".decode("utf-8", "surrogateescape")
    for header in (as_aiohttp_decodes, "sha256=é", good + "\udc80", "\ud800", "", None):
        assert not signature_ok(SECRET, body, header)
    assert signature_ok(SECRET, body, f"  {good} ")


def test_masked_hides_phone_numbers_and_keeps_the_rest() -> None:
    text = 'File "x.py", line 1234567, in f\nValueError: +420601234567 or 420601234567, id 0x7f3a12345678'
    out = masked(text)
    assert "601234" not in out and "+420******567" in out and "4206*****567" in out
    assert "0x7f3a12345678" in out, "digits inside a word are not a phone number"
    try:
        raise RuntimeError("no route to +420601234567")
    except RuntimeError as exc:
        tb = masked_traceback(exc)
    assert "RuntimeError: no route to +420******567" in tb and "Traceback" in tb


def _record(exc: BaseException, level: int = logging.ERROR) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        info = sys.exc_info()
    return server_log.makeRecord(
        server_log.name, level, __file__, 1, "Error handling request from %s", ("1.2.3.4",), info
    )


def test_a_clients_fault_is_not_logged_with_a_traceback() -> None:
    filt = ClientFaults()
    for exc in (BadHttpMessage("Invalid header value char"), ContentEncodingError("gzip")):
        record = _record(exc)
        kept = filt.filter(record)
        assert record.levelno == logging.DEBUG and record.exc_info is None
        assert kept == server_log.isEnabledFor(logging.DEBUG)
        assert "1.2.3.4" in record.getMessage() and str(exc) in record.getMessage()


def test_a_fault_of_ours_keeps_its_level_with_the_traceback_masked() -> None:
    record = _record(RuntimeError("boom for +420601234567"))
    assert ClientFaults().filter(record)
    assert record.levelno == logging.ERROR and record.exc_info is None
    exc = record.__dict__["exc"]
    assert "Traceback" in exc and "+420******567" in exc and "601234567" not in exc

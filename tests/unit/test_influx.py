"""Line protocol: exact escaping and types, read back by an independent parser; the writer's buffer."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from line_protocol_parser import parse_line

from metrics.influx import InfluxTarget, InfluxWriter, Point, encode, escape_key, field_value
from metrics.recorder import Recorder, influx_points

# what line protocol can carry in names: anything but a backslash and line breaks (see metrics/influx.py)
NAME = st.text(
    st.characters(blacklist_characters="\\\r\n\t\x00", blacklist_categories=("Cs",)), min_size=1, max_size=30
)
FIELD_TEXT = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=40)


@given(
    measurement=NAME.filter(lambda m: not m.startswith("#")),
    tags=st.dictionaries(NAME, NAME, max_size=4),
    ints=st.dictionaries(NAME, st.integers(-(2**63), 2**63 - 1), max_size=3),
    # subnormals excluded: the reference parser uses strtod, which reports them out of range (InfluxDB takes them)
    floats=st.dictionaries(NAME, st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False), max_size=3),
    texts=st.dictionaries(NAME, FIELD_TEXT, max_size=3),
    bools=st.dictionaries(NAME, st.booleans(), max_size=2),
    ts=st.integers(0, 2**53),
)
def test_points_round_trip_through_an_independent_parser(
    measurement: str,
    tags: dict[str, str],
    ints: dict[str, int],
    floats: dict[str, float],
    texts: dict[str, str],
    bools: dict[str, bool],
    ts: int,
) -> None:
    fields: dict[str, Any] = {**ints, **floats, **texts, **bools}
    if not fields:
        fields = {"count": 1}
    line = encode(Point(measurement, tags, fields, ts))
    assert line is not None and "\n" not in line
    parsed = parse_line(line.encode())
    assert parsed["measurement"] == measurement
    assert parsed["tags"] == tags
    assert parsed["time"] == ts
    assert set(parsed["fields"]) == set(fields)
    for key, value in fields.items():
        got = parsed["fields"][key]
        if isinstance(value, float):
            assert got == value or math.isclose(got, value, rel_tol=1e-15)
        else:
            assert got == value, (key, value, got, line)


def test_escaping_of_each_part() -> None:
    line = encode(Point("cpu load,x", {"host name": "a,b=c", "empty": ""}, {"f k": 'say "hi"\\', "n": 3}, 5))
    assert line == 'cpu\\ load\\,x,host\\ name=a\\,b\\=c f\\ k="say \\"hi\\"\\\\",n=3i 5'
    assert escape_key("a\\b\nc") == "a/b\\ c"  # unrepresentable characters replaced, documented
    assert field_value(1.5) == "1.5" and field_value(True) == "true" and field_value(7) == "7i"
    assert field_value(float("nan")) is None and encode(Point("m", {}, {"x": float("inf")}, 1)) is None


def test_v1_and_v2_endpoints() -> None:
    url, params, headers = InfluxTarget("http://i:8086/", database="d", username="u", password="p").endpoint()
    assert url == "http://i:8086/write" and params == {"db": "d", "precision": "ms", "u": "u", "p": "p"}
    assert headers["Content-Encoding"] == "gzip"
    url, params, headers = InfluxTarget("http://i:8086", api="v2", bucket="b", org="o", token="t").endpoint()
    assert url == "http://i:8086/api/v2/write" and params == {"org": "o", "bucket": "b", "precision": "ms"}
    assert headers["Authorization"] == "Token t"


def test_the_buffer_is_bounded_and_drops_the_oldest() -> None:
    n = iter(range(10_000))
    writer = InfluxWriter(InfluxTarget("http://x"), lambda ms: [Point("m", {}, {"v": next(n)}, ms)], max_buffer_lines=3)
    for t in range(5):
        writer.collect(t)
    assert writer.pending == 3 and writer.stats.dropped_lines == 2
    assert [line.split()[1] for line in writer._buffer] == ["v=2i", "v=3i", "v=4i"]


def test_kpis_from_the_recorder() -> None:
    r = Recorder("t")
    for _ in range(4):
        r.call_placed("c")
    r.call_ringing("c", 0.5)
    r.call_ringing("c", 1.5)
    r.call_ended("c", "remote_hangup", True, 30.0)
    r.call_ended("c", "rejected", False, None)
    r.call_ended("c", "failed", False, None)
    r.call_ended("c", "invalid_number", False, None)
    for status, previous in (("sent", "in_progress"), ("read", "sent"), ("delivered", "in_progress")):
        r.transition("whatsapp", status, previous, "w")
    r.transition("whatsapp", "delivery_failed", "in_progress", "w")
    for status, previous in (("sent", "in_progress"), ("replied", "sent")):  # a reply implies delivered and read
        r.transition("whatsapp", status, previous, "r")
    points = {p.measurement + p.tags.get("campaign", ""): p for p in influx_points(r, "gw", 1, voice=True)}
    calls = points["telgate_callsc"].fields
    assert calls["attempts"] == 4 and calls["answered"] == 1 and calls["asr"] == 0.25 and calls["ner"] == 0.75
    assert calls["acd_s"] == 30.0 and calls["active"] == 0 and calls["pdd_ms_p50"] == 1500.0
    wa = points["telgate_whatsappw"].fields
    assert (wa["sent"], wa["delivered"], wa["read"], wa["failed"]) == (2, 2, 1, 1)
    assert wa["delivery_rate"] == 1.0 and wa["read_rate"] == 0.5
    assert wa["replied"] == 0 and wa["reply_rate"] == 0.0
    replied = points["telgate_whatsappr"].fields
    assert (replied["sent"], replied["delivered"], replied["read"], replied["replied"]) == (1, 1, 1, 1)
    assert replied["read_rate"] == 1.0 and replied["reply_rate"] == 1.0
    assert points["telgate_gateway"].fields == {"bus_connected": 0, "outbox_pending": 0, "pbx_up": 0}
    assert r.registry.get_sample_value("telgate_call_attempts_total", {"outcome": "answered"}) == 1


@pytest.mark.parametrize("count", [0, 1])
def test_contacts_measurement_counts_current_statuses(count: int) -> None:
    r = Recorder("t", campaign_label=False)
    r.transition("voice", "initial", None, "camp")
    if count:
        r.transition("voice", "calling", "initial", "camp")
    rows = {
        p.tags["status"]: p.fields["count"]
        for p in influx_points(r, "gw", 1, False)
        if p.measurement == "telgate_contacts"
    }
    assert rows == ({"initial": 0, "calling": 1} if count else {"initial": 1})


def test_a_reply_after_a_failed_delivery_counts_delivered_read_and_replied() -> None:
    r = Recorder("t")
    for status, previous in (("sent", "in_progress"), ("delivery_failed", "sent"), ("replied", "delivery_failed")):
        r.transition("whatsapp", status, previous, "w")
    r.transition("whatsapp", "sent", "in_progress", "w")
    (wa,) = [p.fields for p in influx_points(r, "gw", 1, voice=False) if p.measurement == "telgate_whatsapp"]
    assert (wa["sent"], wa["delivered"], wa["read"], wa["replied"], wa["failed"]) == (2, 1, 1, 1, 0)
    assert wa["reply_rate"] == 0.5 and wa["delivery_rate"] == 0.5

"""whatsapp/inbound.py: customers' messages read from real webhook bodies (shared/corpora/whatsapp), and totality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import CORPORA
from whatsapp.inbound import Inbound, inbound_messages
from whatsapp.models import Notification
from whatsapp.notices import notices
from whatsapp.standin import StandIn

FOLDER = CORPORA / "whatsapp"
CUSTOMER = "972987654321"
BUSINESS = "972123456789"


def corpus_files() -> list[Path]:
    if not FOLDER.is_dir():
        pytest.skip("shared/corpora/whatsapp is not beside this checkout")
    return sorted(FOLDER.glob("*.json")) + sorted((FOLDER / "notices").glob("*.json"))


def read(name: str) -> list[Inbound]:
    path = FOLDER / name
    if not path.exists():
        pytest.skip("shared/corpora/whatsapp is not beside this checkout")
    batch = inbound_messages(Notification.model_validate_json(path.read_bytes()))
    assert batch.skipped == 0, name
    return batch.messages


def test_every_corpus_file_parses_and_reads_without_exception() -> None:
    files = corpus_files()
    assert len(files) >= 50
    for path in files:
        note = Notification.model_validate_json(path.read_bytes())
        batch = inbound_messages(note)
        notices(note)
        assert batch.skipped == 0, path.name
        for msg in batch.messages:  # the raw message is kept as received, and the wire form round-trips
            assert msg.raw in json.loads(path.read_bytes())["entry"][0]["changes"][0]["value"]["messages"]
            assert Inbound.model_validate(msg.model_dump(by_alias=True)) == msg


def test_status_and_api_files_give_no_inbound_message() -> None:
    for path in corpus_files():
        if "incoming" in path.name:
            continue
        batch = inbound_messages(Notification.model_validate_json(path.read_bytes()))
        assert batch == ([], 0), path.name


# What each file of the corpus gives: (type, fields of the Inbound, fields of its media/location/reaction/context).
_PYWA = "david-lev__pywa__incoming-"
EXPECTED: dict[str, dict[str, Any]] = {
    "text-message": {"type": "text", "text": "Body Text", "timestamp": 1697043223},
    "reply": {"type": "text", "text": "replied text", "context.id": "wamid.xyzxyz==", "context.from_": BUSINESS},
    "forwarded": {"type": "text", "text": "forwarded text", "context.forwarded": True, "context.id": None},
    "forwarded-many-times": {"type": "text", "context.frequently_forwarded": True, "context.forwarded": False},
    "referral": {
        "type": "text",
        "text": "BODY",
        "id": "wamid.ID",
        "referral.source_id": "ADID",
        "referral.ctwa_clid": "CTWA_CLID",
        "referral.source_type": "ad or post",
    },
    "button-quick-reply": {
        "type": "button",
        "text": "title",
        "payload": "callback_data",
        "context.id": "wamid.xyzxyz==",
        "id": "wamid.xsidjw",
    },
    "button-quick-reply-without-context": {
        "type": "button",
        "payload": "callback_data",
        "context": None,
        "from_user_id": "US.13491208655302741918",
    },
    "button-button": {
        "type": "interactive",
        "interactive_type": "button_reply",
        "text": "title",
        "payload": "callback_data",
        "context.id": "wamid.xyzxyz",
        "context.from_": "1122334455667",
    },
    "list-callback": {
        "type": "interactive",
        "interactive_type": "list_reply",
        "text": "title",
        "payload": "callback_data",
    },
    "list-description": {"type": "interactive", "interactive_type": "list_reply", "payload": "callback_data"},
    "interactive-message-with-err": {  # `interactive` missing: kept, with nothing to read
        "type": "interactive",
        "interactive_type": None,
        "text": None,
        "payload": None,
        "context.id": "wamid.gvwegfretge==",
    },
    "image": {
        "type": "image",
        "media.id": "65463453",
        "media.mime_type": "image/jpeg",
        "media.sha256": "4654+8g=",
        "text": None,
    },
    "media-with-url": {"type": "image", "media.id": "65463453", "media.url": "https://lookaside.fbsbx.com/"},
    "video": {
        "type": "video",
        "media.id": "765756756",
        "media.mime_type": "video/mp4",
        "media.sha256": "Jh+2ij6PzUv/J2y+grrtegr/ZMzRxkEPwc24Oyib4s03w9Jc=",
        "media.caption": "caption",
        "text": "caption",
        "context.forwarded": True,
    },
    "document": {
        "type": "document",
        "media.id": "1234567890987654321",
        "media.mime_type": "application/pdf",
        "media.filename": "filename.pdf",
        "text": "caption",
    },
    "audio": {"type": "audio", "media.mime_type": "audio/ogg; codecs=opus", "media.voice": False},
    "voice": {
        "type": "audio",
        "media.voice": True,
        "media.sha256": "m04pFf2ERdaopTyFkGPA0+bX3i+YY2dYgVFwOgDLSDI=",
    },
    "static-sticker": {"type": "sticker", "media.mime_type": "image/webp", "media.animated": False},
    "animated-sticker": {"type": "sticker", "media.animated": True, "media.id": "1234567890987654321"},
    "current-location": {
        "type": "location",
        "location.latitude": 12.25089,
        "location.longitude": 43.90539,
        "location.name": None,
    },
    "chosen-location": {
        "type": "location",
        "location.latitude": 37.4611978,
        "location.longitude": -122.2164385,
        "location.name": "Facebook HQ",
        "location.address": "1 Hacker Way, Menlo Park, CA 94025",
        "location.url": "https://maps.google.com/?cid=2000000000000000000",
    },
    "contacts": {
        "type": "contacts",
        "contacts.0.name.formatted_name": "Chandler Bing",
        "contacts.2.phones.0.type": "WORK",
    },
    "reaction": {
        "type": "reaction",
        "reaction.message_id": "wamid.yzxyzx=",
        "reaction.emoji": "\N{FACE WITH OPEN MOUTH}",
    },
    "unreaction-empty": {"type": "reaction", "reaction.emoji": "", "reaction.removed": True},
    "unreaction-no-emoji": {"type": "reaction", "reaction.emoji": None, "reaction.removed": True},
    "order": {"type": "order", "order.catalog_id": "354160437058781", "order.product_items.0.quantity": 3},
    "unsupported": {"type": "unsupported", "errors.0.code": 131051, "errors.0.title": "Message type unknown"},
    "unsupported-with-type": {"type": "unsupported", "errors.0.code": 131051, "raw.unsupported.type": "pool"},
}


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list):
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


def test_every_incoming_file_of_the_corpus_has_its_expectations() -> None:
    incoming = {p.name.removeprefix(_PYWA).removesuffix(".json") for p in corpus_files() if _PYWA in p.name}
    assert incoming == set(EXPECTED), "a new incoming file in the corpus: add what it gives to EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_an_incoming_file_gives_its_type_and_content(name: str) -> None:
    [msg] = read(f"{_PYWA}{name}.json")
    assert msg.from_ == CUSTOMER and msg.profile_name == "Test Name"
    assert msg.phone_number_id == "1122334455667" and msg.display_phone_number == BUSINESS
    assert msg.id.startswith("wamid.") and msg.timestamp is not None and msg.unreadable == ()
    for path, expected in EXPECTED[name].items():
        got = _get(msg, path)
        if path == "media.url":
            assert isinstance(got, str) and got.startswith(expected)
        else:
            assert got == expected, f"{name}: {path}"


def test_two_identical_messages_in_one_post_are_both_given_in_order() -> None:
    msgs = read("nyaruka__courier__incoming-two-identical-messages-one-post.json")
    assert [(m.id, m.from_, m.text, m.profile_name) for m in msgs] == [
        ("external_id", "5678", "Hello World", "Kerry Fisher")
    ] * 2
    assert msgs[0].display_phone_number == "+250 788 123 200" and msgs[0].timestamp == 1454119029


def test_wire_form_uses_metas_from() -> None:
    [msg] = read(f"{_PYWA}text-message.json")
    dumped = msg.model_dump(by_alias=True, exclude={"raw"})
    assert dumped["from"] == CUSTOMER and "from_" not in dumped


# -- totality ---------------------------------------------------------------------------------------------


def note_of(messages: Any, **value: Any) -> Notification:
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "1", "changes": [{"field": "messages", "value": {"messages": messages, **value}}]}],
    }
    return Notification.model_validate(doc)


def test_messages_without_id_or_from_are_skipped_and_counted() -> None:
    good = {"id": "wamid.1", "from": "420601234567", "type": "text", "text": {"body": "ano"}}
    bad: list[Any] = [
        {"from": "420601234567", "type": "text"},
        {"id": "wamid.2", "type": "text"},
        {"id": "", "from": "420601234567"},
        {"id": "wamid.3", "from": 420601234567},
        {"id": ["wamid.4"], "from": "420601234567"},
        "wamid.5",
        None,
        7,
        [],
    ]
    batch = inbound_messages(note_of([bad[0], good, *bad[1:], good]))
    assert [m.id for m in batch.messages] == ["wamid.1", "wamid.1"] and batch.skipped == len(bad)


def test_messages_that_are_not_a_list_are_one_message_not_a_refused_post() -> None:
    status = {"id": "wamid.s", "status": "sent"}
    note = note_of("wamid.1", statuses=[status])
    assert inbound_messages(note) == ([], 1) and [s.id for s in note.statuses()] == ["wamid.s"]
    [lone] = inbound_messages(note_of({"id": "wamid.1", "from": "1"})).messages  # an object alone: read as one
    assert lone.id == "wamid.1"
    doc = {"entry": [{"changes": [{"field": "messages", "value": ["not", "an", "object"]}]}]}
    assert inbound_messages(Notification.model_validate(doc)) == ([], 1)


def test_a_part_of_the_wrong_shape_is_none_and_named_the_message_kept() -> None:
    msg = {
        "id": "wamid.1",
        "from": "420601234567",
        "timestamp": "yesterday",
        "type": "image",
        "image": {"id": ["x"]},
        "context": "wamid.0",
        "referral": 3,
        "errors": [{"code": "not a number"}, {"code": 131051}],
        "future_field": {"kept": True},
    }
    [got] = inbound_messages(note_of([msg])).messages
    assert got.timestamp is None and got.media is None and got.context is None and got.referral is None
    assert [e.code for e in got.errors] == [131051]
    assert set(got.unreadable) == {"timestamp", "image", "context", "referral", "errors"}
    assert got.raw == msg and got.raw["future_field"] == {"kept": True}


def test_unknown_and_missing_types_are_kept() -> None:
    msgs = [
        {"id": "w1", "from": "1", "type": "hologram", "hologram": {"x": 1}},
        {"id": "w2", "from": "1"},
        {"id": "w3", "from": "1", "type": 5},
        {"id": "w4", "from": "1", "type": "system", "system": {"body": "changed number"}},
    ]
    got = inbound_messages(note_of(msgs)).messages
    assert [(m.type, m.unreadable) for m in got] == [
        ("hologram", ()),
        ("unknown", ()),
        ("unknown", ("type",)),
        ("system", ()),
    ]
    assert got[0].raw["hologram"] == {"x": 1}


def test_timestamps_are_epoch_seconds_whatever_meta_sends() -> None:
    msgs = [
        {"id": f"w{i}", "from": "1", "type": "text", "timestamp": t}
        for i, t in enumerate(["1697043223", 1697043223, True, "\uff11\uff12", -1, "1.5"])
    ]
    assert [m.timestamp for m in inbound_messages(note_of(msgs)).messages] == [
        1697043223,
        1697043223,
        None,
        None,
        None,
        None,
    ]


def test_flow_reply_keeps_response_json_raw() -> None:
    flow = {
        "type": "nfm_reply",
        "nfm_reply": {"name": "flow", "body": "Sent", "response_json": '{"flow_token": "t", "ok": true}'},
    }
    [got] = inbound_messages(note_of([{"id": "w", "from": "1", "type": "interactive", "interactive": flow}])).messages
    assert (got.interactive_type, got.text, got.payload) == ("nfm_reply", "Sent", '{"flow_token": "t", "ok": true}')


def test_profile_name_is_the_senders_and_metadata_may_be_anything() -> None:
    contacts = [{"wa_id": "2", "profile": {"name": "Other"}}, "junk", {"wa_id": "1", "profile": {"name": "Jana"}}]
    msgs = [{"id": "w1", "from": "1"}, {"id": "w2", "from": "3"}]
    got = inbound_messages(note_of(msgs, contacts=contacts, metadata="not an object")).messages
    assert [(m.profile_name, m.phone_number_id) for m in got] == [("Jana", None), (None, None)]


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
json_any = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
_key = st.sampled_from(
    [
        "id",
        "from",
        "type",
        "timestamp",
        "text",
        "button",
        "interactive",
        "image",
        "audio",
        "video",
        "document",
        "sticker",
        "location",
        "contacts",
        "reaction",
        "context",
        "referral",
        "order",
        "errors",
        "from_user_id",
    ]
)
message_like = st.one_of(
    json_any,
    st.dictionaries(_key, json_any, max_size=8),
    st.fixed_dictionaries(
        {"id": st.text(max_size=8), "from": st.text(max_size=8)},
        optional={
            k: json_any for k in ("type", "text", "interactive", "image", "context", "errors", "reaction", "location")
        },
    ),
)


@given(st.lists(message_like, max_size=4), json_any)
def test_any_json_in_place_of_messages_never_raises(messages: list[Any], contacts: Any) -> None:
    note = note_of(messages, contacts=contacts)
    batch = inbound_messages(note)
    assert len(batch.messages) + batch.skipped == len(messages)
    assert all(isinstance(m.raw, dict) for m in batch.messages)


@given(json_any, st.one_of(st.none(), st.sampled_from(["messages", "account_update", "user_preferences", "x"])))
def test_any_json_in_place_of_a_value_never_raises(value: Any, field: str | None) -> None:
    if isinstance(value, dict) and ({"statuses", "errors"} & value.keys()):
        value = {k: v for k, v in value.items() if k not in ("statuses", "errors")}  # those are statuses' own rules
    doc = {"entry": [{"id": "1", "time": value, "changes": [{"field": field, "value": value}]}]}
    note = Notification.model_validate(doc)  # accepted: what cannot be read is counted, not a refused POST
    inbound_messages(note)
    notices(note)


# -- the stand-in's envelopes read back ----------------------------------------------------------------------


def test_standin_message_envelope_reads_back() -> None:
    si = StandIn("t", "secret", "http://127.0.0.1:9/wh")
    msgs = [
        si.text_message("420601234567", "STOP", context_id="wamid.ours"),
        si.button_message("420601234567", "confirm", "Confirm"),
        si.interactive_reply("420601234568", "no", "No", kind="list_reply"),
        si.inbound_message("420601234568", "image", {"id": "m1", "mime_type": "image/jpeg", "sha256": "h"}),
    ]
    status = {"id": "wamid.ours", "status": "read", "recipient_id": "420601234567"}
    note = Notification.model_validate(si.message_envelope(msgs, names={"420601234567": "Jana"}, statuses=[status]))
    got = inbound_messages(note).messages
    assert [(m.type, m.text, m.payload, m.profile_name) for m in got] == [
        ("text", "STOP", None, "Jana"),
        ("button", "Confirm", "confirm", "Jana"),
        ("interactive", "No", "no", "Customer"),
        ("image", None, None, "Customer"),
    ]
    assert got[0].context is not None and got[0].context.id == "wamid.ours" and got[3].media is not None
    assert got[0].phone_number_id == si.phone_number_id and len({m.id for m in got}) == 4
    assert [s.status for s in note.statuses()] == ["read"] and notices(note) == ([], 0)

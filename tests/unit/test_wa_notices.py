"""whatsapp/notices.py: Meta's notices read from real webhook bodies (shared/corpora/whatsapp/notices), and totality."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import CORPORA
from whatsapp.inbound import inbound_messages
from whatsapp.models import Notification
from whatsapp.notices import (
    AccountAlertNotice,
    AccountUpdateNotice,
    GenericNotice,
    Notice,
    PhoneQualityNotice,
    TemplateCategoryNotice,
    TemplateQualityNotice,
    TemplateStatusNotice,
    UserPreferenceNotice,
    notices,
)
from whatsapp.standin import StandIn

FOLDER = CORPORA / "whatsapp" / "notices"
WABA = "102290129340398"
_PYWA = "david-lev__pywa__"

# What each file of notices/ gives: its class and fields.
EXPECTED: dict[str, tuple[type[Any], dict[str, Any]]] = {
    "user-preferences-resume": (
        UserPreferenceNotice,
        {
            "wa_id": "16505551234",
            "category": "marketing_messages",
            "value": "resume",
            "detail": "User requested to resume marketing messages",
            "timestamp": 1731705721,
            "phone_number_id": "106540352242922",
            "display_phone_number": "15550783881",
            "stopped": False,
            "time": None,
        },
    ),
    "user-preferences-signup": (
        UserPreferenceNotice,
        {"wa_id": "16505551234", "value": "signup", "raw.signup_id": "13176843987434774", "stopped": False},
    ),
    "template-status-approved": (
        TemplateStatusNotice,
        {
            "event": "APPROVED",
            "message_template_id": "1689556908129832",
            "message_template_name": "order_confirmation",
            "message_template_language": "en_US",
            "message_template_category": "UTILITY",
            "reason": "NONE",
            "rejection_info": None,
            "time": 1751247548,
        },
    ),
    "template-status-rejected": (
        TemplateStatusNotice,
        {
            "event": "REJECTED",
            "message_template_id": "1689556908129835",
            "message_template_name": "abandoned_cart",
            "message_template_language": "en",
            "message_template_category": "MARKETING",
            "reason": "INVALID_FORMAT",
            "rejection_info.recommendation": (
                "Separate parameters with descriptive text and ensure each parameter is clearly contextualized."
            ),
        },
    ),
    "template-quality-yellow": (
        TemplateQualityNotice,
        {
            "previous_quality_score": "GREEN",
            "new_quality_score": "YELLOW",
            "message_template_id": "806312974732579",
            "message_template_name": "welcome_template",
            "message_template_language": "en_US",
            "time": 1674864290,
        },
    ),
    "account-update-account-deleted": (AccountUpdateNotice, {"event": "ACCOUNT_DELETED", "phone_number": None}),
    "account-update-account-disabled": (
        AccountUpdateNotice,
        {
            "event": "DISABLED_UPDATE",
            "ban_info.waba_ban_state": "REINSTATE",
            "ban_info.waba_ban_date": "April 17, 2025",
        },
    ),
    "account-update-account-restriction": (
        AccountUpdateNotice,
        {
            "event": "ACCOUNT_RESTRICTION",
            "restriction_info.0.restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
            "restriction_info.1.restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
            "restriction_info.1.expiration": 1641330498,
            "time": 1641330498,
        },
    ),
    "account-update-account-violation": (
        AccountUpdateNotice,
        {"event": "ACCOUNT_VIOLATION", "violation_info.violation_type": "ADULT"},
    ),
}


FIELD_OF = {
    "user-preferences": "user_preferences",
    "template-status": "message_template_status_update",
    "template-quality": "message_template_quality_update",
    "account-update": "account_update",
}


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(obj, dict):
            obj = obj[part]
        elif isinstance(obj, list):
            obj = obj[int(part)]
        else:
            obj = getattr(obj, part)
    return obj


def read(name: str) -> list[Notice]:
    path = FOLDER / f"{_PYWA}{name}.json"
    if not path.exists():
        pytest.skip("shared/corpora/whatsapp/notices is not beside this checkout")
    note = Notification.model_validate_json(path.read_bytes())
    assert not note.statuses() and not note.messages() and not note.errors()  # envelopes with none of these
    assert inbound_messages(note) == ([], 0)
    batch = notices(note)
    assert batch.skipped == 0
    return batch.notices


def test_every_notice_file_of_the_corpus_has_its_expectations() -> None:
    if not FOLDER.is_dir():
        pytest.skip("shared/corpora/whatsapp/notices is not beside this checkout")
    names = {p.name.removeprefix(_PYWA).removesuffix(".json") for p in FOLDER.glob("*.json")}
    assert names == set(EXPECTED), "a new file in corpora/whatsapp/notices: add what it gives to EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_notice_file_gives_its_kind_and_fields(name: str) -> None:
    [notice] = read(name)
    cls, fields = EXPECTED[name]
    assert type(notice) is cls and notice.waba_id == WABA and notice.unreadable == ()
    assert isinstance(notice.raw, dict) and notice.field == FIELD_OF[name.rsplit("-", 1)[0].removesuffix("-account")]
    for path, expected in fields.items():
        assert _get(notice, path) == expected, f"{name}: {path}"


def test_status_and_message_files_give_no_notice() -> None:
    folder = CORPORA / "whatsapp"
    if not folder.is_dir():
        pytest.skip("shared/corpora/whatsapp is not beside this checkout")
    for path in sorted(folder.glob("*.json")):
        assert notices(Notification.model_validate_json(path.read_bytes())) == ([], 0), path.name


# -- Meta's documented shapes of the fields the corpus has no file for -----------------------------------------


def one(field: str, value: Any, **entry: Any) -> Notice:
    doc = {
        "object": "whatsapp_business_account",
        "entry": [{"id": "W", **entry, "changes": [{"field": field, "value": value}]}],
    }
    batch = notices(Notification.model_validate(doc))
    assert batch.skipped == 0
    [notice] = batch.notices
    return notice


def test_user_preferences_stop() -> None:
    value = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "contacts": [{"profile": {"name": "Jana"}, "wa_id": "420601234567"}],
        "user_preferences": [
            {
                "wa_id": "420601234567",
                "detail": "User requested to stop marketing messages",
                "category": "marketing_messages",
                "value": "stop",
                "timestamp": 1731705721,
            }
        ],
    }
    notice = one("user_preferences", value)
    assert isinstance(notice, UserPreferenceNotice) and notice.stopped and notice.wa_id == "420601234567"


def test_template_paused_with_other_info() -> None:
    value = {
        "event": "PAUSED",
        "message_template_id": 123,
        "message_template_name": "reminder",
        "message_template_language": "cs",
        "reason": None,
        "other_info": {"title": "FIRST_PAUSE", "description": "Your template has been paused for 3 hours"},
    }
    notice = one("message_template_status_update", value, time=1700000000)
    assert isinstance(notice, TemplateStatusNotice)
    assert (notice.event, notice.message_template_id, notice.title, notice.time) == (
        "PAUSED",
        "123",
        "FIRST_PAUSE",
        1700000000,
    )
    assert notice.description == "Your template has been paused for 3 hours" and notice.reason is None


def test_template_disabled_and_pending_deletion() -> None:
    disabled = one(
        "message_template_status_update",
        {"event": "DISABLED", "message_template_name": "t", "disable_info": {"disable_date": "DATE"}},
    )
    assert isinstance(disabled, TemplateStatusNotice) and disabled.disable_info == {"disable_date": "DATE"}
    pending = one("message_template_status_update", {"event": "PENDING_DELETION", "message_template_name": "t"})
    assert isinstance(pending, TemplateStatusNotice) and pending.event == "PENDING_DELETION"


def test_template_category_update() -> None:
    impending = one(
        "template_category_update",
        {
            "message_template_id": 9,
            "message_template_name": "t",
            "message_template_language": "en",
            "correct_category": "MARKETING",
            "new_category": "UTILITY",
            "category_update_timestamp": 1700000000,
        },
    )
    assert isinstance(impending, TemplateCategoryNotice)
    assert (impending.correct_category, impending.new_category, impending.category_update_timestamp) == (
        "MARKETING",
        "UTILITY",
        1700000000,
    )
    done = one(
        "template_category_update",
        {"message_template_id": 9, "previous_category": "UTILITY", "new_category": "MARKETING"},
    )
    assert isinstance(done, TemplateCategoryNotice) and (done.previous_category, done.message_template_id) == (
        "UTILITY",
        "9",
    )


def test_phone_number_quality_update() -> None:
    value = {
        "display_phone_number": "15550783881",
        "event": "DOWNGRADE",
        "old_limit": "TIER_10K",
        "current_limit": "TIER_1K",
        "max_daily_conversations_per_business": "TIER_1K",
    }
    notice = one("phone_number_quality_update", value)
    assert isinstance(notice, PhoneQualityNotice)
    assert (notice.event, notice.old_limit, notice.current_limit, notice.display_phone_number) == (
        "DOWNGRADE",
        "TIER_10K",
        "TIER_1K",
        "15550783881",
    )


def test_account_alerts() -> None:
    value = {
        "entity_type": "BUSINESS",
        "entity_id": 506914307656634,
        "alert_info": {
            "alert_severity": "WARNING",
            "alert_status": "ACTIVE",
            "alert_type": "INCREASED_CAPABILITIES_ELIGIBILITY_NEED_MORE_INFO",
            "alert_description": "Additional verification is required",
        },
    }
    notice = one("account_alerts", value)
    assert isinstance(notice, AccountAlertNotice)
    assert (notice.entity_type, notice.entity_id, notice.alert_severity, notice.alert_status) == (
        "BUSINESS",
        "506914307656634",
        "WARNING",
        "ACTIVE",
    )
    assert notice.alert_type == "INCREASED_CAPABILITIES_ELIGIBILITY_NEED_MORE_INFO"


def test_account_update_with_phone_number() -> None:
    notice = one("account_update", {"phone_number": "15550783881", "event": "VERIFIED_ACCOUNT"})
    assert isinstance(notice, AccountUpdateNotice) and (notice.phone_number, notice.event) == (
        "15550783881",
        "VERIFIED_ACCOUNT",
    )


def test_any_other_field_is_a_generic_notice_with_its_raw_value() -> None:
    notice = one(
        "business_capability_update", {"max_daily_conversation_per_phone": 1000, "max_phone_numbers_per_business": 2}
    )
    assert isinstance(notice, GenericNotice) and notice.field == "business_capability_update"
    assert notice.raw == {"max_daily_conversation_per_phone": 1000, "max_phone_numbers_per_business": 2}
    odd = one("security", ["not", "an", "object"])
    assert isinstance(odd, GenericNotice) and odd.raw == ["not", "an", "object"]


# -- totality ---------------------------------------------------------------------------------------------


def test_unreadable_parts_are_named_and_unreadable_notices_counted() -> None:
    notice = one(
        "message_template_status_update", {"event": ["PAUSED"], "message_template_name": "t", "other_info": "x"}
    )
    assert isinstance(notice, TemplateStatusNotice) and notice.event is None and notice.other_info is None
    assert set(notice.unreadable) == {"event", "other_info"} and notice.message_template_name == "t"
    prefs = {
        "user_preferences": [
            {"wa_id": "1", "value": "stop", "category": "marketing_messages"},
            "junk",
            {"value": "stop"},
            {"wa_id": 5, "value": "stop", "timestamp": "x"},
        ]
    }
    doc = {
        "entry": [
            {
                "changes": [
                    {"field": "user_preferences", "value": prefs},
                    {"field": "account_update", "value": 7},
                    {"field": "user_preferences", "value": {"user_preferences": 3}},
                ]
            }
        ]
    }
    batch = notices(Notification.model_validate(doc))
    assert [getattr(n, "wa_id", None) for n in batch.notices] == ["1", "5"] and batch.skipped == 4
    assert batch.notices[1].unreadable == ("timestamp",)


_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12))
json_any = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=16,
)
_FIELDS = [
    "user_preferences",
    "message_template_status_update",
    "message_template_quality_update",
    "template_category_update",
    "account_update",
    "phone_number_quality_update",
    "account_alerts",
    "other",
]
_KEYS = [
    "user_preferences",
    "event",
    "message_template_id",
    "message_template_name",
    "other_info",
    "restriction_info",
    "ban_info",
    "violation_info",
    "alert_info",
    "current_limit",
    "category_update_timestamp",
    "metadata",
    "contacts",
]
value_like = st.one_of(
    json_any,
    st.dictionaries(st.sampled_from(_KEYS), json_any, max_size=6),
    st.fixed_dictionaries(
        {
            "user_preferences": st.lists(
                st.one_of(
                    json_any,
                    st.dictionaries(
                        st.sampled_from(["wa_id", "user_id", "value", "category", "timestamp", "detail"]), json_any
                    ),
                ),
                max_size=3,
            )
        }
    ),
)


@given(st.lists(st.tuples(st.sampled_from(_FIELDS), value_like), min_size=1, max_size=4))
def test_any_json_in_place_of_a_notice_value_never_raises(changes: list[tuple[str, Any]]) -> None:
    doc = {"entry": [{"id": "W", "changes": [{"field": f, "value": v} for f, v in changes]}]}
    batch = notices(Notification.model_validate(doc))
    assert len(batch.notices) + batch.skipped >= len(changes) - sum(f == "user_preferences" for f, _ in changes)
    assert all(n.field in _FIELDS for n in batch.notices)


def test_standin_notice_envelope_reads_back() -> None:
    si = StandIn("t", "secret", "http://127.0.0.1:9/wh")
    doc = si.notice_envelope(
        "user_preferences",
        si.user_preferences_value("420601234567"),
        ("message_template_status_update", si.template_status_value("reminder", event="PAUSED", reason="LOW_QUALITY")),
        (
            "account_update",
            {
                "event": "ACCOUNT_RESTRICTION",
                "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1}],
            },
        ),
    )
    note = Notification.model_validate(doc)
    batch = notices(note)
    assert [n.kind for n in batch.notices] == [
        "user_preference",
        "template_status",
        "account_update",
    ] and batch.skipped == 0
    pref, tpl, acct = batch.notices
    assert isinstance(pref, UserPreferenceNotice) and pref.stopped and pref.phone_number_id == si.phone_number_id
    assert isinstance(tpl, TemplateStatusNotice) and (tpl.message_template_name, tpl.reason) == (
        "reminder",
        "LOW_QUALITY",
    )
    assert isinstance(acct, AccountUpdateNotice) and acct.waba_id == si.waba_id and acct.time is not None
    assert inbound_messages(note) == ([], 0) and not note.statuses()

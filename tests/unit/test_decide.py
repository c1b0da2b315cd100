"""The pure core: every flow of SPEC §5.1/§5.2 through decide(), with a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.domain import effects as fx
from gateway.domain.decide import Decision, decide
from gateway.domain.policy import Policy
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState, Mode
from gateway.domain.statuses import Channel, Profile, Status, label

T0 = datetime(2026, 11, 24, 23, 0, tzinfo=UTC)
S = Status
K = Kind


def contact(channel: Channel = Channel.VOICE, **kw: object) -> ContactState:
    return ContactState(campaign_id="c", contact_id="k", channel=channel, **kw)  # type: ignore[arg-type]


def run(state: ContactState, *signals: Signal, now: datetime = T0) -> tuple[ContactState, list[Decision]]:
    out = []
    for sig in signals:
        d = decide(state, sig, now)
        out.append(d)
        state = d.state
    return state, out


def statuses(decisions: list[Decision]) -> list[str]:
    return [e.status.value for d in decisions for e in d.events]


PHONE = "+420601234567"
CREATE = Signal(K.CREATE, phone=PHONE)
DUE = Signal(K.DIAL_DUE)


def test_progressive_flow_to_success_with_sequence() -> None:
    state, ds = run(
        contact(),
        CREATE,
        DUE,
        Signal(K.RINGING, attempt=1),
        Signal(K.ANSWERED, attempt=1),
        Signal(K.HANGUP, attempt=1, duration_s=30),
    )
    assert statuses(ds) == ["initial", "calling", "call_in_progress", "success"]
    assert [e.sequence for d in ds for e in d.events] == [1, 2, 3, 4]
    assert state.status is S.SUCCESS and not state.in_flight
    assert fx.Dial(1) in ds[1].effects
    assert fx.AddTalkTime(30) in ds[4].effects
    assert ds[2].events == () and ds[2].illegal is None  # ringing stays calling, publishes nothing


def test_wrapup_goes_through_acw_and_timer() -> None:
    _state, ds = run(
        contact(wrapup=True),
        CREATE,
        DUE,
        Signal(K.ANSWERED, attempt=1),
        Signal(K.HANGUP, attempt=1),
        Signal(K.WRAPUP_DONE),
    )
    assert statuses(ds) == ["initial", "calling", "call_in_progress", "acw", "success"]
    assert fx.StartTimer(fx.TimerKind.ACW, T0 + timedelta(seconds=120)) in ds[3].effects


def test_predictive_awaiting_operator_and_client_hangup() -> None:
    base = contact(mode=Mode.PREDICTIVE)
    _, ds = run(base, CREATE, DUE, Signal(K.ANSWERED, attempt=1), Signal(K.CONNECTED), Signal(K.HANGUP, attempt=1))
    assert statuses(ds) == ["initial", "calling", "awaiting_operator", "call_in_progress", "success"]
    _, ds = run(base, CREATE, DUE, Signal(K.ANSWERED, attempt=1), Signal(K.CLIENT_HANGUP, attempt=1))
    assert statuses(ds)[-1] == "canceled_by_client"


def test_preview_flow_bcw_and_operator_reject() -> None:
    base = contact(mode=Mode.PREVIEW, bcw_s=10)
    state, ds = run(base, CREATE, Signal(K.ASSIGNED), Signal(K.ACCEPTED))
    assert statuses(ds) == ["initial", "operator_assigned", "bcw"]
    assert ds[0].effects == ()  # preview contacts wait for an operator, not for the dialer
    assert fx.StartTimer(fx.TimerKind.BCW, T0 + timedelta(seconds=10)) in ds[2].effects
    state, ds = run(state, Signal(K.BCW_ELAPSED), DUE)
    assert fx.Enqueue(T0, 0) in ds[0].effects and statuses(ds) == ["calling"]
    _, ds = run(base, CREATE, Signal(K.ASSIGNED), Signal(K.OPERATOR_REJECTED))
    assert statuses(ds)[-1] == "rejected_by_operator"


def test_no_operator_waits_before_dial() -> None:
    _, ds = run(contact(), CREATE, Signal(K.NO_OPERATOR), Signal(K.ASSIGNED), DUE)
    assert statuses(ds) == ["initial", "awaiting_operator", "operator_assigned", "calling"]


@pytest.mark.parametrize(
    ("kind", "final"),
    [
        (K.REJECTED, S.COMPLETED_WITHOUT_ANSWER),
        (K.UNREACHABLE, S.COMPLETED_WITHOUT_ANSWER),
        (K.FAILED, S.DIAL_FAILED),
    ],
)
def test_retry_then_final_when_attempts_spent(kind: Kind, final: Status) -> None:
    policy = Policy(max_attempts=2, delays_s=(60,), retry_on=("rejected", "unreachable", "failed"))
    state, ds = run(contact(policy=policy), CREATE, DUE, Signal(kind, attempt=1))
    assert statuses(ds)[-1] == "retry_scheduled"
    ev = ds[-1].events[0]
    assert ev.retry_at == T0 + timedelta(seconds=60) and fx.Enqueue(T0 + timedelta(seconds=60), 0) in ds[-1].effects
    state, ds = run(state, DUE, Signal(kind, attempt=2))
    assert statuses(ds) == ["calling", final.value] and ds[0].events[0].attempt == 2


def test_failed_not_in_retry_on_is_final_at_once() -> None:
    _, ds = run(contact(), CREATE, DUE, Signal(K.FAILED, attempt=1))
    assert statuses(ds)[-1] == "dial_failed"


def test_invalid_number_never_retried_and_bad_phone_on_create() -> None:
    _, ds = run(contact(), CREATE, DUE, Signal(K.INVALID_NUMBER, attempt=1))
    assert statuses(ds)[-1] == "invalid_record"
    _, ds = run(contact(), Signal(K.CREATE, phone=None))
    assert statuses(ds) == ["initial", "invalid_record"] and ds[0].events[1].final


def test_blacklist_and_plan_limit_before_first_dial() -> None:
    _, ds = run(contact(), CREATE, Signal(K.DIAL_DUE, blacklisted=True))
    assert statuses(ds)[-1] == "blacklisted"
    _, ds = run(contact(), CREATE, Signal(K.DIAL_DUE, contacts_dialed=1, max_contacts=1))
    assert statuses(ds)[-1] == "plan_limit_exceeded"


def test_cancel_ringing_call_cancels_it_and_late_outcome_is_stale() -> None:
    state, ds = run(contact(), CREATE, DUE, Signal(K.CANCEL))
    assert statuses(ds)[-1] == "canceled_by_admin" and fx.CancelCall() in ds[-1].effects
    state, ds = run(state, Signal(K.UNREACHABLE, attempt=1))
    assert ds[0].absorbed == "stale" and not ds[0].events and ds[0].illegal is None


def test_cancel_connected_call_runs_to_end_without_retry() -> None:
    _state, ds = run(
        contact(), CREATE, DUE, Signal(K.ANSWERED, attempt=1), Signal(K.CANCEL), Signal(K.HANGUP, attempt=1)
    )
    assert statuses(ds) == ["initial", "calling", "call_in_progress", "success"]


def test_finish_lets_ringing_call_end_without_retry() -> None:
    _, ds = run(contact(), CREATE, DUE, Signal(K.FINISH), Signal(K.REJECTED, attempt=1))
    assert statuses(ds)[-1] == "completed_without_answer"


def test_remove_refused_in_flight_allowed_waiting() -> None:
    _, ds = run(contact(), CREATE, DUE, Signal(K.REMOVE))
    assert ds[-1].refused == "contact_in_flight"
    _, ds = run(contact(), CREATE, Signal(K.REMOVE))
    assert statuses(ds)[-1] == "removed"


def test_restart_rule() -> None:
    _state, ds = run(contact(), CREATE, DUE, Signal(K.GATEWAY_RESTART, {"kind": "gateway_restart"}))
    assert statuses(ds)[-1] == "retry_scheduled" and ds[-1].events[0].evidence["kind"] == "gateway_restart"
    one = contact(policy=Policy(max_attempts=1))
    _, ds = run(one, CREATE, DUE, Signal(K.GATEWAY_RESTART))
    assert statuses(ds)[-1] == "dial_failed"
    _, ds = run(contact(), CREATE, DUE, Signal(K.ANSWERED, attempt=1), Signal(K.GATEWAY_RESTART))
    assert statuses(ds)[-1] == "success"


def test_illegal_transition_names_state_and_signal() -> None:
    _, ds = run(contact(), CREATE, Signal(K.WRAPUP_DONE))
    assert ds[-1].illegal == "initial + wrapup_done" and not ds[-1].events


def test_create_twice_is_refused() -> None:
    state, _ = run(contact(), CREATE)
    assert decide(state, CREATE, T0).refused == "contact_busy"
    state, _ = run(contact(), Signal(K.CREATE, phone=None))
    assert decide(state, CREATE, T0).refused == "contact_final"


def test_labels_by_profile() -> None:
    assert label(Channel.VOICE, S.COMPLETED_WITHOUT_ANSWER, Profile.MLUVII) == "Not reached"
    assert label(Channel.VOICE, S.COMPLETED_WITHOUT_ANSWER, Profile.TOVIE) == "Completed without answer"
    assert label(Channel.VOICE, S.RETRY_SCHEDULED, Profile.TOVIE) == "Another call attempt scheduled"


# --- WhatsApp ---------------------------------------------------------------------------------

WA = Channel.WHATSAPP


def wa_sent() -> ContactState:
    state, _ = run(contact(WA), CREATE, DUE, Signal(K.WA_ACCEPTED, wamid="wamid.1"))
    return state


def test_whatsapp_moves_only_up_and_read_without_delivered() -> None:
    _state, ds = run(wa_sent(), Signal(K.WA_READ), Signal(K.WA_DELIVERED), Signal(K.WA_SENT))
    assert statuses(ds) == ["read"]
    assert [d.absorbed for d in ds[1:]] == ["duplicate", "duplicate"]


def test_whatsapp_accept_maps_wamid_without_event() -> None:
    state, ds = run(contact(WA), CREATE, DUE, Signal(K.WA_ACCEPTED, wamid="wamid.1"))
    assert ds[-1].events == () and fx.MapWamid("wamid.1") in ds[-1].effects and state.wamid == "wamid.1"


def test_whatsapp_failure_then_success_wins() -> None:
    _, ds = run(wa_sent(), Signal(K.WA_SENT), Signal(K.WA_DELIVERY_FAILED), Signal(K.WA_DELIVERED))
    assert statuses(ds) == ["sent", "delivery_failed", "delivered"]


def test_whatsapp_retryable_then_error_and_pair_limit() -> None:
    policy = Policy(max_attempts=2, delays_s=(10,))
    state, ds = run(contact(WA, policy=policy), CREATE, DUE, Signal(K.WA_RETRYABLE))
    assert statuses(ds)[-1] == "retry_scheduled"
    _, ds = run(state, DUE, Signal(K.WA_RETRYABLE))
    assert statuses(ds)[-1] == "error"
    _, ds = run(contact(WA, policy=policy), CREATE, DUE, Signal(K.WA_PAIR_LIMIT))
    assert ds[-1].events[0].retry_at == T0 + timedelta(hours=24)


def test_whatsapp_account_error_pauses_campaign() -> None:
    _, ds = run(contact(WA), CREATE, DUE, Signal(K.WA_ACCOUNT, {"wa_error_code": 190, "wa_error_title": "expired"}))
    assert statuses(ds)[-1] == "error" and fx.PauseCampaign("whatsapp_account_error:190 expired") in ds[-1].effects


def test_whatsapp_ambiguous_timeout() -> None:
    state, ds = run(contact(WA), CREATE, DUE, Signal(K.WA_AMBIGUOUS, duration_s=600))
    assert ds[-1].events == () and fx.StartTimer(fx.TimerKind.AMBIGUOUS, T0 + timedelta(seconds=600)) in ds[-1].effects
    _, ds = run(state, Signal(K.AMBIGUOUS_ELAPSED))
    assert statuses(ds) == ["retry_scheduled"]
    _, ds = run(state, Signal(K.WA_DELIVERED), Signal(K.AMBIGUOUS_ELAPSED))
    assert statuses(ds) == ["delivered"] and ds[1].absorbed == "stale"


def test_whatsapp_webhooks_after_cancel_are_recorded_not_published() -> None:
    _state, ds = run(wa_sent(), Signal(K.CANCEL), Signal(K.WA_DELIVERED))
    assert statuses(ds) == ["canceled_by_admin"] and ds[1].absorbed == "recorded"


def test_whatsapp_131026_is_sending_failed() -> None:
    _, ds = run(wa_sent(), Signal(K.WA_SENDING_FAILED))
    assert statuses(ds) == ["sending_failed"]

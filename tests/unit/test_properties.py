"""Property tests on the pure core: any sequence of signals keeps the contract of SPEC §5 and §9."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.domain.decide import decide
from gateway.domain.policy import Policy
from gateway.domain.signals import Kind, Signal
from gateway.domain.state import ContactState, Mode
from gateway.domain.statuses import STATUSES, WA_RANK, Channel, Status, is_final

T0 = datetime(2026, 11, 24, tzinfo=UTC)

signals = st.builds(
    Signal,
    kind=st.sampled_from([k for k in Kind if k is not Kind.CREATE]),
    blacklisted=st.booleans(),
    contacts_dialed=st.integers(0, 3),
    max_contacts=st.one_of(st.none(), st.integers(0, 3)),
    attempt=st.one_of(st.none(), st.integers(1, 4)),
    duration_s=st.one_of(st.none(), st.floats(0, 3600)),
    wamid=st.one_of(st.none(), st.just("wamid.x")),
)


@settings(max_examples=400, deadline=None)
@given(
    channel=st.sampled_from(list(Channel)),
    mode=st.sampled_from(list(Mode)),
    wrapup=st.booleans(),
    max_attempts=st.integers(1, 4),
    phone=st.sampled_from(["+420601234567", None]),
    seq=st.lists(signals, max_size=40),
)
def test_any_signal_sequence_keeps_the_contract(
    channel: Channel, mode: Mode, wrapup: bool, max_attempts: int, phone: str | None, seq: list[Signal]
) -> None:
    state = ContactState(
        campaign_id="c",
        contact_id="k",
        channel=channel,
        mode=mode,
        wrapup=wrapup,
        policy=Policy(max_attempts=max_attempts, retry_on=("rejected", "unreachable", "failed")),
    )
    d = decide(state, Signal(Kind.CREATE, phone=phone), T0)
    state = d.state
    expected_seq = 0
    for ev in d.events:
        expected_seq += 1
        assert ev.sequence == expected_seq
    now = T0
    for sig in seq:
        now += timedelta(seconds=1)
        before = state
        d = decide(state, sig, now)
        if d.illegal or d.absorbed or d.refused:
            assert d.events == ()
            assert d.state.status is before.status
        for ev in d.events:
            expected_seq += 1
            assert ev.sequence == expected_seq  # sequence grows by one per event
            assert ev.status in STATUSES[channel]  # only legal statuses of the channel
            assert ev.previous_status is before.status or ev.previous_status is not None
            assert ev.final == is_final(channel, ev.status)
        if d.events:
            old, new = before.status, d.state.status
            if is_final(channel, old):  # finals stay final, except §5.2's later success
                assert channel is Channel.WHATSAPP and old is Status.DELIVERY_FAILED
                assert new in (Status.DELIVERED, Status.READ)
            if channel is Channel.WHATSAPP and old in WA_RANK and new in WA_RANK:
                assert WA_RANK[new] > WA_RANK[old]  # WhatsApp never moves down
            assert d.state.attempt <= max_attempts
        assert d.state.sequence == expected_seq
        state = d.state

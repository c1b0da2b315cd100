"""Channel ports: what the engine asks of a channel adapter (voice over SIP, WhatsApp Cloud API).

Adapters implement this protocol; `submit` must not block: it hands the effect to the adapter's own
task group and returns. Outcomes come back as signals through `Engine.signal`.
"""

from __future__ import annotations

from typing import Protocol

from gateway.domain.effects import Effect
from gateway.domain.state import ContactState
from gateway.domain.statuses import Channel


class ChannelPort(Protocol):
    channel: Channel
    max_concurrent: int

    @property
    def max_rate(self) -> float:
        """New attempts per second now (the dispatcher's one token bucket spends it, read each turn)."""
        ...

    def active(self, campaign_id: str | None = None) -> int:
        """Attempts in flight (all, or of one campaign)."""
        ...

    def active_counts(self) -> dict[str, int]:
        """Attempts in flight per campaign, as a copy: taken in the event loop and handed to the
        dispatcher's turn, which runs on the store thread (campaigns with none may be left out)."""
        ...

    def submit(self, effect: Effect, contact: ContactState) -> None:
        """Carry out a channel effect for `contact` after its decision was committed: Dial/Send/CancelCall;
        on an answered call PlayPrompt/Transfer/HangUp (reported back as `prompt_done`/`transfer_done`)."""
        ...

    async def run(self) -> None:
        """The adapter's own tasks (transport, sends in flight) until cancelled."""
        ...

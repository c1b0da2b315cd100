"""The bus's topic layout (SPEC §3), written once: the gateway publishes and subscribes by it, and the
backend-side tools (submit, import, watch, demo) address the gateway by it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Topics:
    prefix: str

    # gateway -> backends
    def contact(self, channel: str, campaign_id: str, contact_id: str) -> str:
        return f"{self.prefix}/v1/evt/contact/{channel}/{campaign_id}/{contact_id}"

    def contacts(self, campaign_id: str | None = None) -> str:
        """The filter of every contact event (of one campaign)."""
        return f"{self.prefix}/v1/evt/contact/+/{campaign_id or '+'}/+"

    def campaign(self, campaign_id: str) -> str:
        return f"{self.prefix}/v1/evt/campaign/{campaign_id}"

    def inbound(self, phone_number_id: str) -> str:
        return f"{self.prefix}/v1/evt/inbound/whatsapp/{phone_number_id}"

    def notice(self, phone_number_id: str) -> str:
        return f"{self.prefix}/v1/evt/notice/whatsapp/{phone_number_id}"

    @property
    def command_result(self) -> str:
        return f"{self.prefix}/v1/evt/command"

    def presence(self, gateway_id: str) -> str:
        return f"{self.prefix}/v1/gateways/{gateway_id}/status"

    @property
    def all_presence(self) -> str:
        return f"{self.prefix}/v1/gateways/+/status"

    # backends -> gateway
    def command(self, kind: str) -> str:
        return f"{self.prefix}/v1/cmd/{kind}"

    @property
    def commands(self) -> str:
        return f"{self.prefix}/v1/cmd/+"

    def replies(self, client_id: str) -> str:
        """A backend's own Response Topic (outside the gateway's namespaces, SPEC §3)."""
        return f"{self.prefix}/v1/replies/{client_id}"

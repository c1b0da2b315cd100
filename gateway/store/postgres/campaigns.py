"""Campaigns: their status and settings, and their counters (dialled contacts, talk time), which only ever
move by an UPDATE that adds."""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.domain.state import CampaignState
from gateway.store import count_in_cache
from gateway.store.postgres.batch import WriteBatch

# a transaction's counts for one campaign add up in one row while nothing else of the campaign's was
# queued after it: one UPDATE per campaign and batch, not one per dialled contact and per ended call
BUMP = (
    "UPDATE campaigns SET dialed_contacts = dialed_contacts + %s, talk_seconds = talk_seconds + %s"
    " WHERE campaign_id = %s"
)
INSERT_CAMPAIGN = "INSERT INTO campaigns (campaign_id, state, status) VALUES (%s, %s::jsonb, %s) ON CONFLICT DO NOTHING"
UPSERT_CAMPAIGN = (
    "INSERT INTO campaigns (campaign_id, state, status) VALUES (%s, %s::jsonb, %s) ON CONFLICT (campaign_id)"
    " DO UPDATE SET state=excluded.state, status=excluded.status"
)


class Campaigns(WriteBatch):
    def __init__(self, conn: psycopg.Connection[Any], read_only: bool = False) -> None:
        super().__init__(conn, read_only)
        self._campaigns: dict[str, CampaignState | None] = {}  # read once per transaction (one per batch)

    def lock_campaign(self, campaign_id: str) -> CampaignState | None:
        self._campaigns.pop(campaign_id, None)
        return self.get_campaign(campaign_id, lock=True)

    def get_campaign(self, campaign_id: str, lock: bool = False) -> CampaignState | None:
        if campaign_id in self._campaigns:
            return self._campaigns[campaign_id]
        self._flush("campaigns")
        row = self._one(
            "SELECT state::text, dialed_contacts, talk_seconds FROM campaigns WHERE campaign_id=%s"
            + (" FOR UPDATE" if lock else ""),
            (campaign_id,),
        )
        state = None
        if row is not None:
            state = CampaignState.model_validate_json(row[0]).model_copy(
                update={"dialed_contacts": row[1], "talk_seconds": row[2]}
            )
        self._campaigns[campaign_id] = state
        return state

    def put_campaign(self, state: CampaignState, created: bool = False) -> None:
        """Status and settings; the counters are only ever moved by `bump_campaign`. A creation is an
        INSERT that must insert (CAS: another instance's creation meanwhile is a Conflict)."""
        self._campaigns.pop(state.campaign_id, None)
        self._wakes.add("ready")  # a campaign started or resumed: its queue is ready for every instance
        blob = state.model_dump_json(exclude={"dialed_contacts", "talk_seconds"})
        self._queue(
            "campaigns",
            INSERT_CAMPAIGN if created else UPSERT_CAMPAIGN,
            (state.campaign_id, blob, state.status),
            state.campaign_id,
        )

    def count_dialed(self, campaign_id: str, n: int = 1) -> None:
        """Queued with the batch's writes (one round trip for all of them) instead of an UPDATE … RETURNING
        each: in bench/pipeline a dialled contact's round trip was a sixth of the store thread's time."""
        count_in_cache(self._campaigns, campaign_id, "dialed_contacts", n)
        self._bump(campaign_id, n, 0.0)

    def count_talk(self, campaign_id: str, seconds: float) -> None:
        """Queued like `count_dialed`: an ended call's UPDATE … RETURNING was an eighth of the store thread."""
        count_in_cache(self._campaigns, campaign_id, "talk_seconds", seconds)
        self._bump(campaign_id, 0, seconds)

    def _bump(self, campaign_id: str, dialed: int, talk_s: float) -> None:
        groups = self._queued.get("campaigns")
        if groups and groups[-1].sql is BUMP:  # the campaigns' latest group: add to this campaign's row
            rows = groups[-1].rows
            for index in range(len(rows) - 1, -1, -1):
                if rows[index][2] == campaign_id:
                    rows[index] = (rows[index][0] + dialed, rows[index][1] + talk_s, campaign_id)
                    return
        self._queue("campaigns", BUMP, (dialed, talk_s, campaign_id), campaign_id)

    def bump_campaign(self, campaign_id: str, dialed: int = 0, talk_s: float = 0.0) -> tuple[float, float | None]:
        """One UPDATE … RETURNING: the counters move atomically, whoever else bumps them."""
        self._campaigns.pop(campaign_id, None)
        self._flush("campaigns")
        row = self._one(
            "UPDATE campaigns SET dialed_contacts = dialed_contacts + %s, talk_seconds = talk_seconds + %s"
            " WHERE campaign_id = %s RETURNING talk_seconds, (state->'budget'->>'max_talk_minutes')::float8",
            (dialed, talk_s, campaign_id),
        )
        return (0.0, None) if row is None else (float(row[0]), row[1])

"""The MQTT bus (SPEC §3): commands in over a shared subscription, the outbox out with QoS 1.

- A command is acknowledged to the broker (manual PUBACK, in order) only after its result is committed,
  so a crash before the commit gets it redelivered; its CommandResult is then published from the outbox.
- An outbox row is deleted only after the broker's PUBACK; a reconnect republishes from the oldest
  unacknowledged row in id order, so per-contact order holds and repeats carry the same event_id.
- Presence is retained; the will sets `offline` when the process dies.
- A stop keeps the persistent session and its place in the share group (commands published meanwhile wait
  for the restart), unless the instance leaves the group (`leave_on_stop`, `leave_group`): then it
  unsubscribes, takes and acknowledges what the broker had already routed to it, and ends the session.

Layout (one concept per module): `state.py` the constructor and what the parts share; `connection.py`
the client (session, will, paho hooks), connecting and reconnecting, subscribing, presence, close;
`intake.py` the receiver, manual acks, the parse-ahead bound, each command's handling and its result;
`outbox.py` the publisher and its window, the dead letters, the deleter; `share_group.py` leaving the
share group and adopting a dead member's session. `Bus` is those parts composed.
"""

from gateway.bus.intake import COMMAND_KINDS, PARSE_AHEAD_BYTES
from gateway.bus.outbox import MAX_PAYLOAD, MAX_TOPIC, WINDOW, _publish_failure, _unpublishable, outbox_window
from gateway.bus.share_group import ShareGroup


class Bus(ShareGroup):
    """The bus: connection (connection.py), intake (intake.py), outbox (outbox.py), share group
    (share_group.py)."""


__all__ = [
    "COMMAND_KINDS",
    "MAX_PAYLOAD",
    "MAX_TOPIC",
    "PARSE_AHEAD_BYTES",
    "WINDOW",
    "Bus",
    "_publish_failure",
    "_unpublishable",
    "outbox_window",
]

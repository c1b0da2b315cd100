"""gateway/mqtt_io.Receiver: reading a real Mosquitto's messages with short timeouts loses none.

aiomqtt's `anext(client.messages)` under a timeout drops the message its inner task had already taken
when the timeout expires in that loop turn; one `telgate demo` run in six waited for such an event to the
end of CI's patience. Here a publisher sends numbered QoS 1 messages while the reader times out every
half millisecond, and the reader must see every number exactly once. (Read the same way with
`asyncio.timeout` around `anext(client.messages)`, 581 and 642 of the 3,000 arrived in two runs.)"""

from __future__ import annotations

import asyncio

import aiomqtt
import pytest

from gateway.bus.mqtt_io import Receiver
from tests.support.broker import Mosquitto

pytestmark = pytest.mark.integration
N = 3000


async def _read_all(broker: Mosquitto, read: str) -> tuple[list[int], int]:
    """(the numbers read, how many `get`s timed out), reading with `read` = 'receiver' or 'anext'.

    After the numbers the writer publishes `end` on the same topic: the broker delivers one publisher's
    QoS 1 messages on a topic in order, so once `end` is read every number before it was delivered, and
    one not read by then was lost (no quiet period has to be waited out to say so)."""
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, identifier="reader") as reader,
        aiomqtt.Client("127.0.0.1", broker.port, identifier="writer") as writer,
        Receiver(reader) as receiver,
    ):
        await reader.subscribe("t/#", qos=1)  # SUBACK awaited: the writer's first message is routed to it
        got: list[int] = []
        timeouts = 0

        async def publish() -> None:
            for i in range(N):
                await writer.publish("t/n", str(i).encode(), qos=1)
                if i % 50 == 0:
                    await asyncio.sleep(0.002)  # kept: the messages spread out, so the timeouts interleave
            await writer.publish("t/n", b"end", qos=1)

        messages = aiter(reader.messages)
        async with asyncio.TaskGroup() as tg, asyncio.timeout(60):  # `end` lost too (anext): fail, named
            tg.create_task(publish())
            while True:
                if read == "receiver":
                    message = await receiver.get(0.0005)
                else:
                    try:
                        async with asyncio.timeout(0.0005):
                            message = await anext(messages)
                    except TimeoutError:
                        message = None
                if message is None:
                    timeouts += 1
                    continue
                payload = bytes(message.payload)  # type: ignore[arg-type]
                if payload == b"end":
                    break
                got.append(int(payload))
        return got, timeouts


async def test_receiver_loses_no_message_to_its_timeouts(broker: Mosquitto) -> None:
    got, timeouts = await _read_all(broker, "receiver")
    assert timeouts > 100, "the timeouts did not interleave with the messages: the test proves nothing"
    missing = sorted(set(range(N)) - set(got))
    assert not missing, f"{len(missing)} lost: {missing[:10]}"
    assert len(got) == N, "a message was read twice"

"""SIP user-agent client (sans-IO codec, transactions, dialogs; asyncio transports). Knows no contacts.

Built in the voice-channel issue; the gateway reaches it only through `gateway.engine.ports.ChannelPort`.
"""

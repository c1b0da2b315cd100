"""WhatsApp Cloud API client and webhook receiver. Knows no contacts.

Built in the WhatsApp-channel issue; the gateway reaches it only through `gateway.engine.ports.ChannelPort`.
"""

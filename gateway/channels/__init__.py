"""The channel adapters: the engine's effects → `sip/` and `whatsapp/`, and their results → signals.

`voice.py` calls ↔ contacts' attempts; `whatsapp.py` sends and status webhooks; `whatsapp_inbound.py`
what customers and Meta send back. They translate; the domain decides.
"""

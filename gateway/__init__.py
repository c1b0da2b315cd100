"""telgate: contact-status gateway between campaign backends, a PBX and the WhatsApp Cloud API."""

__version__ = "0.1.0"

"""SDP (RFC 4566, offer/answer RFC 3264) — just what an outbound dialer needs. Sans-IO.

We offer one audio stream: PCMU (0), PCMA (8) and telephone-event (101), 20 ms packets. From the answer
we need where to send the prompt (connection address and port) and which codec the far end chose.
"""

from __future__ import annotations

from dataclasses import dataclass

PCMU, PCMA, TELEPHONE_EVENT = 0, 8, 101
CODECS = (PCMU, PCMA)


def offer(host: str, port: int, session_id: int, version: int = 1) -> bytes:
    family = "IP6" if ":" in host else "IP4"
    lines = [
        "v=0",
        f"o=telgate {session_id} {version} IN {family} {host}",
        "s=telgate",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=audio {port} RTP/AVP {PCMU} {PCMA} {TELEPHONE_EVENT}",
        f"a=rtpmap:{PCMU} PCMU/8000",
        f"a=rtpmap:{PCMA} PCMA/8000",
        f"a=rtpmap:{TELEPHONE_EVENT} telephone-event/8000",
        f"a=fmtp:{TELEPHONE_EVENT} 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass(frozen=True, slots=True)
class Media:
    """Where the far end wants our audio and in which codec."""

    host: str
    port: int
    payload_type: int


def parse_answer(body: bytes) -> Media | None:
    """The first audio stream of an answer that takes PCMU or PCMA; None when there is none to send to.

    A port of 0 (stream refused) or a connection address of 0.0.0.0 (RFC 3264 hold) means no media.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    session_host: str | None = None
    media_host: str | None = None
    port: int | None = None
    formats: list[int] = []
    in_audio = False
    for raw in text.splitlines():
        line = raw.strip()
        if len(line) < 2 or line[1] != "=":
            continue
        kind, value = line[0], line[2:]
        if kind == "c":
            parts = value.split()
            host = parts[2].split("/")[0] if len(parts) >= 3 else None
            if port is None and not in_audio:
                session_host = host
            elif in_audio:
                media_host = host
        elif kind == "m":
            if in_audio:
                break  # only the first audio stream
            parts = value.split()
            if len(parts) >= 4 and parts[0] == "audio":
                try:
                    port = int(parts[1].split("/")[0])
                    formats = [int(f) for f in parts[3:] if f.isdigit()]
                except ValueError:
                    return None
                in_audio = True
    host = media_host or session_host
    if not in_audio or port is None or port <= 0 or port > 65535 or not host or host in ("0.0.0.0", "::"):
        return None
    chosen = next((f for f in formats if f in CODECS), None)
    return None if chosen is None else Media(host, port, chosen)

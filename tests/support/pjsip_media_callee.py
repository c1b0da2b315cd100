"""A PJSIP user agent (pjsua2) as a callee with a voice: it answers every call 200, plays a WAV into it (a
person's "Hello?", a voicemail greeting and its beep, DTMF tones), records what the caller sends, and
presses keys by RFC 4733 or SIP INFO when told.

Run as a process: `python -m tests.support.pjsip_media_callee SPEC.json`. The spec (JSON):
  port, log (PJSIP's message log), transport ("udp" or "tls"; tls: cert, key, ca),
  codec ("PCMU" or "PCMA": the only G.711 it accepts), play (a WAV, 8 kHz mono, or null),
  record (a WAV path: what the caller sent, from the moment the call's media is up), and
  keys: [{"after_s": 1.5, "digits": "1", "method": "rfc4733" | "info"}] pressed that long after the media
  is up (a person who listens to the prompt, then presses).
It prints `ready`, then one line per event: `media <unix time>` (the call's audio is up: playing and
recording start), `state <name> <code>`, `tsx <METHOD> <status>` for each request it answered, `refer
<target>`, `pressed <digits> <method>`. It runs until its stdin closes; the recording is complete when
it has exited.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

import pjsua2 as pj


class Callee(pj.Call):  # type: ignore[misc]
    def __init__(self, owner: Account, call_id: int) -> None:
        super().__init__(owner, call_id)
        self.owner = owner
        self.player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.media_at: float | None = None

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        print(f"state {info.stateText} {info.lastStatusCode}", flush=True)

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        tsx = prm.e.body.tsxState.tsx
        done = pj.PJSIP_TSX_STATE_TERMINATED if tsx.method == "INVITE" else pj.PJSIP_TSX_STATE_COMPLETED
        if tsx.role == pj.PJSIP_ROLE_UAS and tsx.state == done:
            print(f"tsx {tsx.method} {tsx.statusCode}", flush=True)

    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:
        print(f"refer {prm.dstUri}", flush=True)  # accepted (202): PJSIP calls the target and NOTIFYs

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        if self.media_at is not None or self.owner.media_started:
            return  # one call plays and records (a transfer's new call to this callee only answers)
        spec = self.owner.spec
        info = self.getInfo()
        for i, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = self.getAudioMedia(i)
            if spec.get("record") and self.recorder is None:
                self.recorder = pj.AudioMediaRecorder()
                self.recorder.createRecorder(spec["record"])
                audio.startTransmit(self.recorder)
            # the (null) sound device's silence goes to the call all along: PJSIP sends RTP, RFC 4733 events
            # included, only while some source feeds the call's port
            pj.Endpoint.instance().audDevManager().getCaptureDevMedia().startTransmit(audio)
            if spec.get("play") and self.player is None:
                self.player = pj.AudioMediaPlayer()
                self.player.createPlayer(spec["play"], pj.PJMEDIA_FILE_NO_LOOP)
                self.player.startTransmit(audio)
            self.media_at = time.time()
            self.owner.media_started = True
            print(f"media {self.media_at:.6f}", flush=True)
            for key in spec.get("keys", []):
                self.owner.due.append((time.monotonic() + float(key["after_s"]), self, key))
            return


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self.calls: list[Callee] = []
        self.due: list[tuple[float, Callee, dict[str, Any]]] = []
        self.media_started = False

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = Callee(self, prm.callId)
        self.calls.append(call)
        answer = pj.CallOpParam()
        answer.statusCode = 200
        call.answer(answer)

    def press_due(self) -> None:
        now = time.monotonic()
        for entry in [d for d in self.due if d[0] <= now]:
            self.due.remove(entry)
            _, call, key = entry
            param = pj.CallSendDtmfParam()
            param.digits = key["digits"]
            param.duration = 160
            rfc = key.get("method", "rfc4733") == "rfc4733"
            param.method = pj.PJSUA_DTMF_METHOD_RFC2833 if rfc else pj.PJSUA_DTMF_METHOD_SIP_INFO
            try:
                call.sendDtmf(param)
                print(f"pressed {key['digits']} {key.get('method', 'rfc4733')}", flush=True)
            except pj.Error as exc:
                print(f"press failed {exc.info()}", flush=True)


def main(spec: dict[str, Any]) -> None:
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.logConfig.level = 5
    cfg.logConfig.consoleLevel = 0
    cfg.logConfig.msgLogging = True
    cfg.logConfig.filename = spec["log"]
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    cfg.medConfig.noVad = True  # RTP all along, silence too (as a phone line does)
    cfg.medConfig.ecTailLen = 0
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        wanted = codec.codecId.startswith(spec.get("codec", "PCMU") + "/")
        ep.codecSetPriority(codec.codecId, 255 if wanted else 0)
    transport = pj.TransportConfig()
    transport.port = spec["port"]
    transport.boundAddress = "127.0.0.1"
    kind = pj.PJSIP_TRANSPORT_UDP
    scheme = "sip"
    if spec.get("transport") == "tls":
        kind = pj.PJSIP_TRANSPORT_TLS
        transport.tlsConfig.certFile = spec["cert"]
        transport.tlsConfig.privKeyFile = spec["key"]
        transport.tlsConfig.CaListFile = spec["ca"]
        transport.tlsConfig.method = pj.PJSIP_TLSV1_2_METHOD
        scheme = "sips"
    ep.transportCreate(kind, transport)
    ep.libStart()
    acfg = pj.AccountConfig()
    acfg.idUri = f"{scheme}:callee@127.0.0.1:{spec['port']}"
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"  # its SDP names the address it sends from
    account = Account(spec)
    account.create(acfg)
    print("ready", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        ep.libHandleEvents(10)
        account.press_due()
    ep.hangupAllCalls()
    for _ in range(25):
        ep.libHandleEvents(20)
    for call in account.calls:  # the recorder's WAV header is written when it is destroyed
        call.recorder = None
        call.player = None
    account.calls.clear()
    account.shutdown()
    ep.libDestroy()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        main(json.load(f))

"""A PJSIP user agent (pjsua2) as the callee: session timers required, every call answered 200.

Run as a process: `python -m tests.support.pjsip_callee PORT LOG SESSION_EXPIRES`. It prints `ready` once
its UDP transport listens, writes PJSIP's message log (every SIP message it sent and received) to LOG,
and one line per call event to stdout (`state CONFIRMED`, `state DISCONNECTED 200`, `tsx INVITE`/`tsx
UPDATE` for each in-dialog request it received). It runs until its stdin closes.
"""

from __future__ import annotations

import os
import sys
import threading

import pjsua2 as pj


class Callee(pj.Call):  # type: ignore[misc]
    def __init__(self, account: pj.Account, call_id: int) -> None:
        super().__init__(account, call_id)

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        print(f"state {info.stateText} {info.lastStatusCode}", flush=True)

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        tsx = prm.e.body.tsxState.tsx  # a request PJSIP answered: the method and its final status
        done = pj.PJSIP_TSX_STATE_TERMINATED if tsx.method == "INVITE" else pj.PJSIP_TSX_STATE_COMPLETED
        if tsx.role == pj.PJSIP_ROLE_UAS and tsx.state == done:
            print(f"tsx {tsx.method} {tsx.statusCode}", flush=True)


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Callee] = []

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = Callee(self, prm.callId)
        self.calls.append(call)
        answer = pj.CallOpParam()
        answer.statusCode = 200
        call.answer(answer)


def main(port: int, log: str, session_expires: int) -> None:
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.logConfig.level = 5
    cfg.logConfig.consoleLevel = 0
    cfg.logConfig.msgLogging = True
    cfg.logConfig.filename = log
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    ep.libInit(cfg)
    ep.audDevManager().setNullDev()
    transport = pj.TransportConfig()
    transport.port = port
    transport.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    ep.libStart()
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:callee@127.0.0.1:{port}"
    acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_REQUIRED
    acfg.callConfig.timerSessExpiresSec = session_expires
    acfg.callConfig.timerMinSESec = 90  # PJSIP asserts min_se >= 90 (sip_timer.c), RFC 4028's floor
    account = Account()
    account.create(acfg)
    print("ready", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    while not stop.is_set():
        ep.libHandleEvents(20)
    ep.hangupAllCalls()
    for _ in range(25):
        ep.libHandleEvents(20)
    account.calls.clear()  # pjsua2's Call objects must go while the library is alive (it asserts otherwise)
    account.shutdown()
    ep.libDestroy()
    sys.stdout.flush()
    os._exit(0)  # no SWIG destructors after libDestroy


def received(log_text: str) -> list[str]:
    """The SIP messages PJSIP's message log says it received (`RX ... :` up to `--end msg--`)."""
    out: list[str] = []
    for chunk in log_text.split("--end msg--"):
        head, sep, message = chunk.partition(":\n")
        if sep and " .RX " in head.rsplit("\n", 1)[-1]:
            out.append(message.strip().replace("\r\n", "\n"))
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]))

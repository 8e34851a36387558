#!/usr/bin/env python3
"""Boot-time NTP probe: how long requests wait for their first answer after the socket opens.

Started by pyr-bootprobe.service right after pyresponder.socket (stdlib only, inside the test
container). Sends one request every --interval seconds to --target, bounded by --max-seconds, and
stops --after seconds after the first reply. Writes a JSON summary: when the socket became active
(systemd's ActiveEnterTimestampMonotonic; same clock as time.monotonic), when the first reply
came, the longest any answered request waited, requests never answered, and LI=3 replies.
"""

import argparse
import json
import os
import select
import socket
import struct
import subprocess
import time

NTP_UNIX_OFFSET = 2208988800

def socket_active_since() -> float | None:
    out = subprocess.run(
        ["systemctl", "show", "-p", "ActiveEnterTimestampMonotonic", "pyresponder.socket"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    value = out.strip().partition("=")[2]
    return int(value) / 1e6 if value.isdigit() and int(value) > 0 else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=123)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("--max-seconds", type=float, default=20.0)
    ap.add_argument("--after", type=float, default=2.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    started = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((a.target, a.port))
    s.setblocking(False)
    req = bytearray(48)
    req[0] = (4 << 3) | 3
    sent: dict[int, float] = {}
    sent_wall: dict[int, float] = {}
    t2_lag = 0.0  # the reply's receive timestamp (T2) minus when the request was sent
    answered: dict[int, float] = {}
    unsync = 0
    first_reply = None
    seq = 0
    next_send = started
    while True:
        now = time.monotonic()
        if now - started > a.max_seconds:
            break
        if first_reply is not None and now - first_reply > a.after:
            break
        if now >= next_send:
            struct.pack_into("!II", req, 40, 0x424F4F54, seq)
            try:
                sent_wall[seq] = time.time()
                s.send(req)
                sent[seq] = now
            except OSError:
                pass
            seq += 1
            next_send += a.interval
        readable, _, _ = select.select(
            [s], [], [], max(0.0, min(next_send - time.monotonic(), 0.02))
        )
        if not readable:
            continue
        while True:
            try:
                data = s.recv(512)
            except (BlockingIOError, ConnectionRefusedError):
                break
            at = time.monotonic()
            if len(data) < 48:
                continue
            magic, n = struct.unpack_from("!II", data, 24)
            if magic != 0x424F4F54 or n not in sent or n in answered:
                continue
            answered[n] = at
            seconds, fraction = struct.unpack_from("!II", data, 32)
            t2 = seconds - NTP_UNIX_OFFSET + fraction / 2**32
            t2_lag = max(t2_lag, t2 - sent_wall[n])
            if first_reply is None:
                first_reply = at
            if data[0] >> 6 == 3 or data[1] == 0:
                unsync += 1
    socket_up = socket_active_since()
    waits = [answered[n] - sent[n] for n in answered]
    last = max(answered.values(), default=None)
    lost = sorted(n for n, t in sent.items() if n not in answered and last and t < last - 1)
    summary = {
        "socket_up": socket_up,
        "probe_started": started,
        "first_reply": first_reply,
        "first_reply_after_socket": (
            round(first_reply - socket_up, 3) if first_reply and socket_up else None
        ),
        "sent": len(sent),
        "answered": len(answered),
        # Requests sent before the last reply that never got one (a lost request).
        "unanswered": len(lost),
        # When each lost request was sent, seconds after the socket came up: tells a loss at
        # the service's start from one at a later event.
        "lost_sent_after_socket": [
            round(sent[n] - socket_up, 3) if socket_up else None for n in lost
        ],
        "max_wait": round(max(waits), 3) if waits else None,
        "unsynchronized": unsync,
        # Late T2 = the responder stamped a request queued at boot when it read it.
        "max_t2_lag": round(t2_lag, 4),
    }
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""Steady, bounded stream of NTP client requests; counts which ones got a reply.

Runs inside the test container (stdlib only). Every request carries a unique transmit timestamp,
so each reply is matched to its request by the origin timestamp it echoes. Sends at --rate until
--stop-file appears or --max-seconds pass (hard bounds: never more than rate x max-seconds
requests), then waits up to --drain seconds for the last replies and writes a JSON summary.
"""

import argparse
import json
import os
import select
import socket
import struct
import time


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=123)
    ap.add_argument("--rate", type=float, default=2000.0)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--stop-file", default="/tmp/ntp_stream.stop")
    ap.add_argument("--started-file", default="/tmp/ntp_stream.started")
    ap.add_argument("--out", default="/tmp/ntp_stream.json")
    ap.add_argument("--drain", type=float, default=3.0)
    ap.add_argument("--late", type=float, default=1.0, help="seconds after which a reply is late")
    a = ap.parse_args()
    for f in (a.stop_file, a.out):
        if os.path.exists(f):
            os.unlink(f)

    family = socket.AF_INET6 if ":" in a.host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.connect((a.host, a.port))
    s.setblocking(False)
    magic = 0x5057524E  # marks our transmit timestamps
    req = bytearray(48)
    req[0] = (0 << 6) | (4 << 3) | 3  # LI 0, version 4, mode 3 (client)
    got: set[int] = set()
    dup = unsync = bad = late = 0
    sent_at: list[float] = []
    max_gap = 0.0
    last_reply = None

    def drain() -> None:
        nonlocal dup, unsync, bad, late, max_gap, last_reply
        while True:
            try:
                data = s.recv(512)
            except BlockingIOError:
                return
            except ConnectionRefusedError:  # ICMP port unreachable: nobody listening
                bad += 1
                continue
            now = time.monotonic()
            if last_reply is not None:
                max_gap = max(max_gap, now - last_reply)
            last_reply = now
            if len(data) < 48 or data[0] & 7 != 4:
                bad += 1
                continue
            m, seq = struct.unpack_from("!II", data, 24)
            if m != magic:
                bad += 1
                continue
            if seq in got:
                dup += 1
                continue
            got.add(seq)
            if seq < len(sent_at) and now - sent_at[seq] > a.late:
                late += 1
            if data[0] >> 6 == 3 or data[1] == 0:
                unsync += 1

    start = time.monotonic()
    open(a.started_file, "w").close()
    sent = 0
    limit = int(a.rate * a.max_seconds)
    next_check = start
    while sent < limit:
        now = time.monotonic()
        if now - start >= a.max_seconds:
            break
        if now >= next_check:
            if os.path.exists(a.stop_file):
                break
            next_check = now + 0.1
        due = min(limit, int((now - start) * a.rate) + 1)
        while sent < due:
            struct.pack_into("!II", req, 40, magic, sent)
            try:
                s.send(req)
                sent_at.append(time.monotonic())
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                bad += 1
                continue
            sent += 1
        drain()
        select.select([s], [], [], 0.0005)
    send_seconds = time.monotonic() - start
    deadline = time.monotonic() + a.drain
    while len(got) < sent and time.monotonic() < deadline:
        select.select([s], [], [], 0.05)
        drain()
    summary = {
        "sent": sent,
        "received": len(got),
        "lost": sent - len(got),
        "duplicates": dup,
        "unsynchronized": unsync,
        "late": late,
        "bad": bad,
        "seconds": round(send_seconds, 2),
        "rate": round(sent / send_seconds, 1) if send_seconds else 0,
        "max_gap_ms": round(max_gap * 1000, 2),
    }
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f)
    os.replace(tmp, a.out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

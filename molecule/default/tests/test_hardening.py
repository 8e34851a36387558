"""The serving colour's sandbox: systemd's exposure score, no capabilities, a read-only file
system, and no amplification (modes 6 and 7 unanswered, replies never larger than requests)."""

import json
import re

# What `systemd-analyze security` (systemd 252) gives pyresponder@.service: 1.7 before the unit
# gained MemoryDenyWriteExecute, RemoveIPC, ProtectProc, DevicePolicy and ~@privileged @resources.
# What is left: RestrictAddressFamilies (it needs AF_INET/AF_INET6/AF_UNIX), PrivateNetwork and
# IPAddressDeny (a public server), PrivateUsers (refused in unprivileged containers), ProcSubset
# (the metrics read /proc/net/udp), RootDirectory, the rtc device of ProtectClock.
MAX_EXPOSURE = 1.2


def _active(host) -> str:
    return host.file("/var/lib/pyresponder/active").content_string.strip()


def _main_pid(host) -> int:
    active = _active(host)
    return int(host.check_output(f"systemctl show -p MainPID --value pyresponder@{active}"))


def test_exposure_score_does_not_regress(host):
    out = host.check_output(f"systemd-analyze security --no-pager pyresponder@{_active(host)}")
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    print(f"systemd-analyze security: exposure {score} (limit {MAX_EXPOSURE})")
    assert score <= MAX_EXPOSURE, out


def test_main_process_and_workers_have_no_capabilities(host):
    main = _main_pid(host)
    children = [int(p) for p in host.check_output(f"pgrep -P {main}").split()]
    assert children, "no worker processes"
    for pid in [main, *children]:
        status = host.file(f"/proc/{pid}/status").content_string
        caps = dict(re.findall(r"^(Cap\w+):\s+([0-9a-f]+)$", status, re.MULTILINE))
        for name in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
            assert int(caps[name], 16) == 0, (pid, name, caps)
        uid = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.MULTILINE).groups()
        assert "0" not in uid, (pid, uid)


def test_file_system_is_read_only_for_the_service(host):
    assert (
        host.check_output(f"systemctl show -p ProtectSystem --value pyresponder@{_active(host)}")
        == "strict"
    )
    main = _main_pid(host)
    own = host.file(f"/proc/{main}/mountinfo").content_string.splitlines()
    root = next(ln.split() for ln in own if ln.split()[4] == "/")
    if own != host.file("/proc/1/mountinfo").content_string.splitlines():
        # Its own mount namespace (a real host): systemd remounted / read-only for it.
        assert "ro" in root[5].split(","), root
        return
    # An unprivileged container refuses mount namespaces, and systemd then runs the service
    # without ProtectSystem= (and PrivateTmp=). What still holds there: the service user can
    # write nothing on the root file system but the world-writable temporary folders.
    print("no mount namespace for the service (container): checking the user's write access")
    writable = host.check_output(
        "runuser -u pyresponder -- find / -xdev \\( -path /proc -o -path /sys \\) -prune"
        " -o ! -type l -writable -print 2>/dev/null || true"
    ).split()
    allowed = ("/tmp", "/var/tmp")
    outside = [p for p in writable if not any(p == a or p.startswith(a + "/") for a in allowed)]
    assert outside == [], outside


# Run inside the container: send one datagram to 127.0.0.1:123, print the reply length or -1.
EXCHANGE = """
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.5)
out = {}
for name, hexdata in json.loads(sys.argv[1]).items():
    s.sendto(bytes.fromhex(hexdata), ("127.0.0.1", 123))
    try:
        out[name] = len(s.recv(2048))
    except TimeoutError:
        out[name] = -1
print(json.dumps(out))
"""


def test_no_amplification(dexec):
    mode3 = bytes([0x23]) + bytes(39) + bytes.fromhex("0102030405060708")
    requests = {
        # Mode 6 (control): READSTAT, 12-byte header, and padded to 48 bytes.
        "mode6": bytes([0x16, 0x01, 0, 1]) + bytes(8),
        "mode6_48": bytes([0x16, 0x01, 0, 1]) + bytes(44),
        # Mode 7 (private): the monlist request of the classic reflection attacks.
        "mode7": bytes([0x17, 0x00, 0x03, 0x2A]) + bytes(4),
        "mode7_48": bytes([0x17, 0x00, 0x03, 0x2A]) + bytes(44),
        # A client request with a 20-byte MAC (key id + digest): 68 bytes in, 48 out.
        "mac68": mode3 + bytes.fromhex("00000001") + bytes(range(16)),
        "plain48": mode3,
    }
    arg = json.dumps({k: v.hex() for k, v in requests.items()})
    got = json.loads(dexec("python3", "-c", EXCHANGE, arg).stdout)
    print(f"reply lengths: {got}")
    assert got == {
        "mode6": -1,
        "mode6_48": -1,
        "mode7": -1,
        "mode7_48": -1,
        "mac68": 48,
        "plain48": 48,
    }

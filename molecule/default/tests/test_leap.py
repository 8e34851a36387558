"""Leap-second data is found on every tested Debian: right/UTC (12) or the leap-second list (13)."""


def test_chronyd_found_leap_second_data(host):
    conf = host.file("/etc/chrony/chrony.conf").content_string
    log = host.run("journalctl -u chrony -b --no-pager -o cat").stdout
    assert "failed leap second check" not in log
    # The role decides on the files present on the host, never on the release name.
    if host.file("/usr/share/zoneinfo/right/UTC").exists:
        assert "\nleapsectz right/UTC\n" in conf
        assert "Using right/UTC timezone to obtain leap second data" in log
    else:
        assert "\nleapseclist /usr/share/zoneinfo/leap-seconds.list\n" in conf
        assert "Using leap second list /usr/share/zoneinfo/leap-seconds.list" in log
    assert "Leap status     : Normal" in host.run("chronyc tracking").stdout

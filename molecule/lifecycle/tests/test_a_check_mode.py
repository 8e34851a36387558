"""--check on the provisioned container: site.yml changes nothing and fails nothing; check.yml
(which runs in check mode itself) reports the server."""

import pytest


@pytest.mark.timeout(600)
def test_site_check_mode_on_a_provisioned_host(playbook):
    r = playbook("site.yml", "--check")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "changed=0" in r.stdout and "failed=0" in r.stdout, r.stdout[-3000:]


@pytest.mark.timeout(300)
def test_check_playbook_in_check_mode(playbook):
    r = playbook("playbooks/check.yml", "--check", "-e", "ntp_check_from_control=false")
    assert r.returncode == 0, r.stdout[-3000:]
    assert "on host: offset" in r.stdout, r.stdout[-3000:]

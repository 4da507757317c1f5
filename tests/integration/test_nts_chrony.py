"""The NTS source against a real chronyd 4.3 serving NTS on loopback (``-x``, under setpriv: it never sets the clock).

The truth is exact: chronyd reads this machine's clock (or a libfaketime clock we set), so an honest server's
offset is 0. timeguard's offset is compared with the truth and with ``chronyd -Q`` as an NTS client of the same
server; an on-path relay forges, replays, duplicates and drops the server's replies; a restarted server (new keys)
answers the old cookies with a crypto-NAK.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.support.onpath import OnPathRelay
from tests.support.realprogs import ChronyServer, chronyd_nts_offset, make_test_ca, scratch_dir
from timeguard.measure.nts.source import NtsSession
from timeguard.model import SourceKind, SourceState

pytestmark = pytest.mark.real
RELAY_IP = "127.0.0.3"  # the address the KE server names as its NTP server (record 6), where the relay listens


def session_for(server: ChronyServer, ca_bundle: object, host: str = "localhost") -> NtsSession:
    return NtsSession(host, ke_port=server.nts_port, ca_bundle=str(ca_bundle))


def test_offset_agrees_with_the_truth_and_with_chronyd_as_an_nts_client(chrony_server, test_ca):
    server = chrony_server(nts=test_ca)
    session = session_for(server, test_ca.ca_bundle)
    sample = session.measure(samples=4, timeout_s=2.0)
    assert sample.usable, sample.reason
    assert sample.kind is SourceKind.NTS and sample.operator == "localhost"
    assert sample.offset_lo_s <= 0.0 <= sample.offset_hi_s  # loopback: the truth is 0
    assert abs(sample.offset_s) < 0.001
    auth = sample.auth
    assert (auth.mode, auth.aead, auth.key_bits, auth.cookies, auth.naks) == ("nts", "AEAD_AES_SIV_CMAC_256", 256,
                                                                              8, 0)
    assert auth.cookie_bytes and auth.cookie_bytes > 0
    assert "first key exchange" in sample.reason
    chrony = chronyd_nts_offset(server, test_ca.ca_bundle)
    assert chrony is not None, "chronyd -Q got no NTS answer"
    assert abs(sample.offset_s - chrony) < 0.001

    again = session.measure(samples=4, timeout_s=2.0)  # cookies replenished: no second key exchange
    assert again.usable and session.key_exchanges == 1 and again.auth.cookies == 8
    assert "key exchange" not in again.reason


def test_ipv6_an_address_in_the_certificate_is_verified_as_an_ip(chrony_server, test_ca):
    if not _ipv6():
        pytest.skip("no IPv6 loopback here")  # as the other IPv6 tests: a host property, not a missing program
    server = chrony_server(nts=test_ca, bind="::1")
    sample = session_for(server, test_ca.ca_bundle, host="::1").measure(samples=2, timeout_s=2.0)
    assert sample.usable, sample.reason
    assert sample.address == f"[::1]:{server.port}" and abs(sample.offset_s) < 0.001


def _ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_a_server_lying_by_five_seconds_behind_nts_is_measured_as_such(chrony_server, test_ca, fake_clock):
    fake_clock.set(5.0)
    server = chrony_server(clock=fake_clock, nts=test_ca)
    sample = session_for(server, test_ca.ca_bundle).measure(samples=4, timeout_s=2.0)
    assert sample.usable, sample.reason
    assert sample.offset_s == pytest.approx(5.0, abs=0.05)  # authenticated, and still wrong: consensus's job
    assert sample.auth.mode == "nts" and sample.auth.aead == "AEAD_AES_SIV_CMAC_256"


@pytest.fixture
def relayed(chrony_server, test_ca):
    """A chronyd whose KE names the relay's address as its NTP server, and the relay in front of it."""
    server = chrony_server(nts=test_ca, extra_conf=(f"ntsntpserver {RELAY_IP}",))
    with OnPathRelay((RELAY_IP, server.port), ("127.0.0.1", server.port)) as relay:
        yield server, relay


def test_the_ntp_server_the_ke_names_is_used_and_a_forger_on_the_path_is_refused(relayed, test_ca):
    server, relay = relayed
    session = session_for(server, test_ca.ca_bundle)
    honest = session.measure(samples=4, timeout_s=2.0)
    assert honest.usable, honest.reason
    assert honest.address == f"{RELAY_IP}:{server.port}"  # records 6/7 honoured
    relay.mode = "forge"
    started = time.monotonic()
    forged = session.measure(samples=4, timeout_s=2.0)
    assert time.monotonic() - started < 2.2
    assert forged.failure is SourceState.UNUSABLE
    assert "reply rejected (4 of 4 replies): authenticator does not verify" in forged.reason


def test_replayed_replies_are_never_accepted_and_duplicates_are_ignored(relayed, test_ca):
    server, relay = relayed
    session = session_for(server, test_ca.ca_bundle)
    assert session.measure(samples=4, timeout_s=2.0).usable  # the relay keeps the first authentic reply
    relay.mode = "replay"
    replayed = session.measure(samples=4, timeout_s=1.0)
    assert replayed.failure is SourceState.UNREACHABLE
    assert "wrong origin timestamp" in replayed.reason and "ignored 4 replies" in replayed.reason
    relay.mode = "duplicate"
    duplicated = session.measure(samples=4, timeout_s=1.0)
    assert duplicated.usable, duplicated.reason
    assert "repeating an answer already received (duplicate or replay)" in duplicated.reason


def test_exhausted_cookies_bring_a_new_key_exchange(relayed, test_ca):
    server, relay = relayed
    session = session_for(server, test_ca.ca_bundle)
    relay.mode = "drop"  # every request spends a cookie, no reply brings one back
    for _ in range(2):
        lost = session.measure(samples=4, timeout_s=0.4)
        assert lost.failure is SourceState.UNREACHABLE
    assert not session.cookies and session.key_exchanges == 1
    relay.mode = "pass"
    sample = session.measure(samples=4, timeout_s=2.0)
    assert sample.usable, sample.reason
    assert "new key exchange: no cookie left" in sample.reason and session.key_exchanges == 2


def test_a_crypto_nak_is_reported_and_the_next_measurement_makes_a_new_key_exchange(chrony_server, test_ca):
    first = chrony_server(nts=test_ca)
    session = session_for(first, test_ca.ca_bundle)
    assert session.measure(samples=2, timeout_s=2.0).usable
    first.stop()
    # Same ports, new server keys (a fresh ntsdumpdir): our cookies no longer decrypt there.
    chrony_server(port=first.port, nts=test_ca, nts_port=first.nts_port)
    nak = session.measure(samples=2, timeout_s=2.0)
    assert nak.failure is SourceState.UNUSABLE and nak.kiss_code == "NTSN"
    assert "crypto-NAK" in nak.reason and nak.auth.naks == 1
    after = session.measure(samples=2, timeout_s=2.0)
    assert after.usable, after.reason
    assert "new key exchange after a crypto-NAK" in after.reason and session.key_exchanges == 2


def test_an_expired_certificate_verifies_when_the_server_time_lies_inside_it(chrony_server, fake_clock):
    """A host 60 days ahead of the truth: the certificate expired by the host clock, not by the server's time."""
    now = datetime.now(UTC)
    tls = make_test_ca(scratch_dir("ca-expired"), not_before=now - timedelta(days=300),
                       not_after=now - timedelta(days=30))
    fake_clock.set(-60 * 86400.0)
    server = chrony_server(clock=fake_clock, nts=tls)
    sample = session_for(server, tls.ca_bundle).measure(samples=2, timeout_s=2.0)
    assert sample.usable, sample.reason
    assert sample.offset_s == pytest.approx(-60 * 86400.0, abs=0.05)


def test_a_server_time_outside_its_certificate_is_refused(chrony_server):
    now = datetime.now(UTC)
    tls = make_test_ca(scratch_dir("ca-expired"), not_before=now - timedelta(days=300),
                       not_after=now - timedelta(days=30))
    server = chrony_server(nts=tls)
    sample = session_for(server, tls.ca_bundle).measure(samples=2, timeout_s=2.0)
    assert sample.failure is SourceState.UNUSABLE
    assert "outside its certificate chain's validity" in sample.reason


def nts_config(server: ChronyServer, ca_bundle: object, **extra: object) -> str:
    return json.dumps({"sources": {"ntp": [], "http": [], "nts": [
        {"host": "localhost", "ke_port": server.nts_port, "ca_bundle": str(ca_bundle), **extra}]},
        "consensus": {"min_sources": 1}})


def test_check_measures_an_nts_source_and_reports_it(chrony_server, test_ca, tmp_path):
    server = chrony_server(nts=test_ca)
    path = tmp_path / "t.yaml"
    path.write_text(nts_config(server, test_ca.ca_bundle, name="lab-nts", operator="lab"))
    proc = subprocess.run([sys.executable, "-m", "timeguard", "check", "--config", str(path), "--json"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    (source,) = report["sources"]
    assert (source["name"], source["kind"], source["state"]) == ("lab-nts", "nts", "truechimer")
    assert abs(source["offset_s"]) < 0.001 and report["classes"]["nts"]["usable"] == 1


def test_the_daemons_probe_keeps_its_session_between_rounds(chrony_server, test_ca):
    from timeguard import config
    from timeguard.measure.check import measure_all, probes

    server = chrony_server(nts=test_ca)
    (probe,) = probes(config.loads(nts_config(server, test_ca.ca_bundle)))
    rounds = [measure_all([probe], 2.0)[0] for _ in range(3)]
    assert all(s.usable for s in rounds), [s.reason for s in rounds]
    assert "first key exchange" in rounds[0].reason
    assert not any("key exchange" in s.reason for s in rounds[1:])  # one KE, then cookies
    assert rounds[-1].auth.ke_age_s >= rounds[0].auth.ke_age_s
    (reloaded,) = probes(config.loads(nts_config(server, test_ca.ca_bundle)))  # a SIGHUP, the old probe alive
    after = measure_all([reloaded], 2.0)[0]
    assert after.usable and "key exchange" not in after.reason


def test_the_daemon_polls_an_nts_source_beside_ntp(chrony_server, test_ca, sources, tmp_path):
    from tests.support import daemon

    server = chrony_server(nts=test_ca)
    config = daemon.write_config(tmp_path, sources)
    cfg = yaml.safe_load(config.read_text())
    cfg["sources"]["nts"] = [{"host": "localhost", "ke_port": server.nts_port, "ca_bundle": str(test_ca.ca_bundle)}]
    config.write_text(yaml.safe_dump(cfg))
    log = tmp_path / "daemon.log"
    proc = daemon.start(config, None, log)
    try:
        def nts_source() -> dict | None:
            record = daemon.last_check(config)
            found = [s for s in (record.sources if record else []) if s["kind"] == "nts"]
            return found[0] if found else None

        source = daemon.wait_for("a check with the NTS source", nts_source, 20, proc)
        assert source["state"] == "truechimer" and abs(source["offset_s"]) < 0.001, source
    finally:
        proc.stop()


def test_a_restarted_daemon_keeps_its_nts_keys_and_makes_no_key_exchange(chrony_server, test_ca, sources,
                                                                          tmp_path):
    """As chrony's ntsdumpdir: the daemon writes its keys and unspent cookies (0600) when it stops, and the next
    start measures on them — no key exchange. A file others could read is not believed: a key exchange instead."""
    import os
    import stat

    from tests.support import daemon

    server = chrony_server(nts=test_ca)
    config = daemon.write_config(tmp_path, sources)
    cfg = yaml.safe_load(config.read_text())
    cfg["sources"]["nts"] = [{"host": "localhost", "ke_port": server.nts_port, "ca_bundle": str(test_ca.ca_bundle)}]
    config.write_text(yaml.safe_dump(cfg))
    kept = Path(cfg["state_dir"]) / "nts-keys.json"

    def first_nts_check(proc, after: float) -> dict:
        def found() -> dict | None:
            record = daemon.last_check(config)
            if record is None or record.wall_s <= after:
                return None
            return next((s for s in record.sources if s["kind"] == "nts"), None)

        return daemon.wait_for("a check with the NTS source", found, 20, proc)

    def run_once(log: Path) -> dict:
        started = time.time()
        proc = daemon.start(config, None, log)
        try:
            source = first_nts_check(proc, started)
        finally:
            proc.stop()
        assert source["state"] == "truechimer", source
        assert daemon.log_event(log, "nts_keys_kept")["sources"] == 1
        return source

    first = run_once(tmp_path / "first.log")
    assert "first key exchange" in first["reason"]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and kept.stat().st_uid == os.geteuid()

    second = run_once(tmp_path / "second.log")
    assert "kept from before the restart" in second["reason"] and "key exchange with" in second["reason"]
    assert "first key exchange" not in second["reason"]
    assert daemon.log_event(tmp_path / "second.log", "nts_keys_restored")["sources"] == 1

    kept.chmod(0o644)  # another user could have read the keys: not believed
    third = run_once(tmp_path / "third.log")
    assert "first key exchange" in third["reason"]
    ignored = daemon.log_event(tmp_path / "third.log", "nts_keys_ignored")
    assert ignored is not None and "must be the daemon's own, 0600" in ignored["problem"]
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600  # rewritten at the stop, the daemon's own again

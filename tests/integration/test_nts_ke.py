"""NTS-KE answers a real chronyd never gives, from a fake KE server (pyOpenSSL, server side) on loopback: each is
a sample with its reason, within the deadline — never an exception, never a hang."""

from __future__ import annotations

import time
import warnings

import pytest

from tests.support.fake_nts_ke import FakeKeServer, good_records
from tests.support.realprogs import make_test_ca, scratch_dir
from timeguard.measure.nts.records import Record, RecordType, u16_list
from timeguard.measure.nts.source import NtsSession
from timeguard.model import SourceState

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from OpenSSL import SSL


def measure(server: FakeKeServer, ca_bundle: object, timeout_s: float = 1.0):
    session = NtsSession("localhost", ke_port=server.port, ca_bundle=str(ca_bundle))
    started = time.monotonic()
    sample = session.measure(samples=1, timeout_s=timeout_s)
    elapsed = time.monotonic() - started
    assert elapsed < timeout_s + 0.2, f"took {elapsed:.2f} s with a {timeout_s} s deadline"
    assert not sample.usable
    return sample


def served(test_ca, **kwargs) -> FakeKeServer:
    return FakeKeServer(cert=test_ca.cert, key=test_ca.key, **kwargs)


def with_record(record: Record) -> list[Record]:
    records = good_records()
    return [*records[:-1], record, records[-1]]


@pytest.mark.parametrize(("records", "reason"), [
    ([Record(RecordType.ERROR, True, u16_list([1])), Record(RecordType.END_OF_MESSAGE, True, b"")],
     "the server sent Error 1 (Bad Request)"),
    ([Record(RecordType.ERROR, True, u16_list([0])), Record(RecordType.END_OF_MESSAGE, True, b"")],
     "Error 0 (Unrecognized Critical Record)"),
    (with_record(Record(RecordType.WARNING, True, u16_list([7]))), "the server sent Warning 7"),
    (with_record(Record(0x1234, True, b"x")), "unknown critical record type 4660"),
    (good_records(cookies=0), "the server sent no cookie"),
    (good_records()[:-1], "no End of Message record"),
    ([Record(RecordType.NEXT_PROTOCOL, True, b""), *good_records()[1:]], "declined NTPv4"),
    ([good_records()[0], Record(RecordType.AEAD, True, u16_list([1])), *good_records()[2:]], "chose AEAD [1]"),
], ids=["error", "error-critical", "warning", "unknown-critical", "no-cookie", "no-eom", "no-protocol", "aead"])
def test_ke_records_refused_with_their_reason(test_ca, records, reason):
    with served(test_ca, records=records) as server:
        sample = measure(server, test_ca.ca_bundle)
    assert sample.failure is SourceState.UNUSABLE
    assert reason in sample.reason


def test_an_unknown_non_critical_record_is_ignored(test_ca):
    # The KE succeeds; the NTP port given (9, discard) answers nothing, so only the KE part of the reason matters.
    with served(test_ca, records=with_record(Record(0x1234, False, b"x"))) as server:
        session = NtsSession("localhost", port=9, ke_port=server.port, ca_bundle=str(test_ca.ca_bundle))
        sample = session.measure(samples=1, timeout_s=0.5)
    assert session.key_exchanges == 1 and len(session.cookies) == 7  # one spent on the request to port 9
    assert sample.reason.startswith("first key exchange with 127.0.0.1:")


def test_a_server_without_alpn_ntske_is_refused(test_ca):
    with served(test_ca, alpn=None) as server:
        sample = measure(server, test_ca.ca_bundle)
    assert sample.failure is SourceState.UNREACHABLE
    assert "did not agree to ALPN ntske/1 (negotiated: none)" in sample.reason


def test_a_server_choosing_another_alpn_is_refused(test_ca):
    with served(test_ca, alpn=b"http/1.1") as server:
        sample = measure(server, test_ca.ca_bundle)
    assert sample.failure is SourceState.UNREACHABLE
    assert "an ALPN other than ntske/1" in sample.reason


def test_tls_below_1_3_is_refused(test_ca):
    with served(test_ca, max_tls=SSL.TLS1_2_VERSION) as server:
        sample = measure(server, test_ca.ca_bundle)
    assert sample.failure is SourceState.UNREACHABLE
    assert "NTS-KE needs TLS 1.3" in sample.reason


def test_a_certificate_for_another_name_is_refused(test_ca):
    other = make_test_ca(scratch_dir("ca-other"), names=("other.example",))
    with FakeKeServer(cert=other.cert, key=other.key) as server:
        sample = measure(server, other.ca_bundle)
    assert sample.failure is SourceState.UNREACHABLE
    assert "is not valid for 'localhost'" in sample.reason and "other.example" in sample.reason


def test_a_certificate_from_an_untrusted_ca_is_refused(test_ca):
    other = make_test_ca(scratch_dir("ca-other"))
    with served(test_ca) as server:
        sample = measure(server, other.ca_bundle)
    assert sample.failure is SourceState.UNREACHABLE
    assert "TLS certificate verification failed" in sample.reason and "not trusted" in sample.reason


@pytest.mark.parametrize(("hang", "where"), [
    ("accept", "did not finish the TLS handshake in time"),
    ("request", "did not finish reading the response in time"),
])
def test_a_ke_server_that_hangs_costs_the_deadline_and_no_more(test_ca, hang, where):
    with served(test_ca, hang=hang) as server:
        sample = measure(server, test_ca.ca_bundle, timeout_s=0.6)
    assert sample.failure is SourceState.UNREACHABLE
    assert where in sample.reason


def test_nothing_listening_is_unreachable_at_once(test_ca):
    with served(test_ca) as server:
        port = server.port
    session = NtsSession("localhost", ke_port=port, ca_bundle=str(test_ca.ca_bundle))
    sample = session.measure(samples=1, timeout_s=1.0)
    assert sample.failure is SourceState.UNREACHABLE and "connection refused" in sample.reason

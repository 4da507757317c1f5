"""Certificate validity judged without the host clock (research/time_anchors.md T15): the TLS plumbing of the
HTTP source, piece by piece, against real handshakes on loopback (tests/support/fake_http.py).

The first tests prove that ``X509_V_FLAG_NO_CHECK_TIME`` really reaches OpenSSL on this Python: the same context
with the bit cleared refuses the same certificate. The behaviour through ``query_http`` is in
tests/integration/test_http_source.py.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.fake_http import FakeDateServer, running
from timeguard.measure import http
from timeguard.measure.http import _date_outside, _expired_before_release, _tls_context, _Validity
from timeguard.measure.sanity import EARLIEST_PLAUSIBLE_S

NO_CHECK_TIME = 0x200000  # OpenSSL's X509_V_FLAG_NO_CHECK_TIME, written out here on purpose


def days_from_now(days: float) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


def handshake(server: FakeDateServer, context: ssl.SSLContext) -> dict[str, Any]:
    """A bare TLS handshake with ``server``; the verified leaf as getpeercert() decodes it."""
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        cert = tls.getpeercert()
        assert cert
        return cert


@pytest.fixture(
    params=[
        pytest.param((-60, -2, "certificate has expired"), id="expired by the real clock"),
        pytest.param((10, 100, "certificate is not yet valid"), id="not yet valid by the real clock"),
    ]
)
def out_of_date(request: pytest.FixtureRequest) -> Iterator[tuple[FakeDateServer, str]]:
    start, end, openssl_says = request.param
    with running(tls=True, not_before=days_from_now(start), not_after=days_from_now(end)) as server:
        yield server, openssl_says


# --- X509_V_FLAG_NO_CHECK_TIME ----------------------------------------------------------------------------------


def test_no_check_time_is_what_lets_a_certificate_out_of_date_by_the_host_clock_through(out_of_date):
    server, openssl_says = out_of_date
    assert server.ca_bundle is not None
    context = _tls_context(server.ca_bundle)
    assert context.verify_flags & NO_CHECK_TIME
    assert handshake(server, context)["subjectAltName"]  # verified, with the flag

    context.verify_flags &= ~NO_CHECK_TIME
    with pytest.raises(ssl.SSLCertVerificationError, match=openssl_says):
        handshake(server, context)  # the very same context and server, without the flag


def test_the_context_still_verifies_chain_and_name():
    with running(tls=True) as server:
        assert server.ca_bundle is not None
        context = _tls_context(server.ca_bundle)
        assert context.verify_mode is ssl.CERT_REQUIRED
        assert context.check_hostname
        assert context.cert_store_stats()["x509_ca"] == 1  # the bundle, and nothing else
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
            handshake(server, _tls_context(write_ca(trustme.CA(), server.ca_bundle + ".other")))
    with running(tls=True, cert_names=("time.example.test",)) as server:
        assert server.ca_bundle is not None
        with pytest.raises(ssl.SSLCertVerificationError, match=r"not valid for '127\.0\.0\.1'"):
            handshake(server, _tls_context(server.ca_bundle))


def write_ca(ca: trustme.CA, path: str) -> str:
    ca.cert_pem.write_to_path(path)
    return path


# --- the trust store: only what the source was configured with --------------------------------------------------


def test_a_query_trusts_exactly_its_own_bundle(tmp_path: Path):
    """Each connection has its own context holding only its CA bundle: nothing is added by connecting, and the
    trust of one source does not leak into another's."""
    other = write_ca(trustme.CA(), str(tmp_path / "other.pem"))
    with running(tls=True, offset_s=0.0) as server:
        assert server.ca_bundle is not None
        with http.Connection(server.url, ca_bundle=server.ca_bundle) as trusting:
            sample = http.query_http(server.url, requests_count=1, connection=trusting)
            assert sample.usable, sample.reason
            assert trusting._tls is not None
            assert trusting._tls.cert_store_stats()["x509_ca"] == 1
        refused = http.query_http(server.url, ca_bundle=other, requests_count=1)
    assert refused.failure is not None
    assert "unable to get local issuer certificate" in refused.reason


def test_without_a_bundle_the_system_store_is_used():
    context = _tls_context(None)
    paths = ssl.get_default_verify_paths()
    assert context.cert_store_stats()["x509_ca"] > 0 or paths.capath
    assert context.verify_flags & NO_CHECK_TIME


@pytest.fixture
def no_system_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "none.pem"))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))
    assert ssl.create_default_context().cert_store_stats()["x509_ca"] == 0  # the situation simulated


def test_a_host_without_a_system_store_falls_back_to_certifis_bundle(no_system_store):
    assert _tls_context(None).cert_store_stats()["x509_ca"] > 50  # certifi's (the bundle requests ships)


def test_without_a_system_store_and_without_certifi_nothing_is_trusted(no_system_store, monkeypatch):
    monkeypatch.setitem(sys.modules, "certifi", None)  # import certifi raises ImportError
    context = _tls_context(None)
    assert context.cert_store_stats()["x509_ca"] == 0  # verification will fail, naming the system store
    assert context.verify_mode is ssl.CERT_REQUIRED


def hashed_store(directory: Path, *cas: trustme.CA, hashed: int | None = None) -> Path:
    """A system store as ca-certificates lays it out: a bundle file inside an OpenSSL hashed directory; only the
    first ``hashed`` CAs (all by default) get their ``<subject hash>.0`` link."""
    directory.mkdir()
    bundle = directory / "ca-certificates.crt"
    bundle.write_bytes(b"".join(ca.cert_pem.bytes() for ca in cas))
    for index, ca in enumerate(cas[:hashed]):
        pem = directory / f"ca{index}.pem"
        ca.cert_pem.write_to_path(str(pem))
        subject_hash = subprocess.run(["openssl", "x509", "-subject_hash", "-noout", "-in", str(pem)],
                                      capture_output=True, text=True, check=True).stdout.strip()
        (directory / f"{subject_hash}.0").symlink_to(pem.name)
    return bundle


def use_store(monkeypatch: pytest.MonkeyPatch, bundle: Path) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    monkeypatch.setenv("SSL_CERT_DIR", str(bundle.parent))


def test_the_system_store_is_read_from_its_hashed_directory_when_needed(tmp_path, monkeypatch):
    """Nothing is parsed up front (Debian's 144 CAs cost 2.3 MiB per context), and a chain still verifies."""
    ca = trustme.CA()
    bundle = hashed_store(tmp_path / "certs", trustme.CA(), ca)
    use_store(monkeypatch, bundle)
    assert http._system_capath() == str(bundle.parent)
    assert _tls_context(None).cert_store_stats()["x509_ca"] == 0
    with running(tls=True, ca=ca, offset_s=0.3) as server:
        sample = http.query_http(server.url, requests_count=2)  # no ca_bundle: the (simulated) system store
    assert sample.usable, sample.reason
    assert sample.offset_lo_s is not None and sample.offset_hi_s is not None
    assert sample.offset_lo_s - 1e-6 <= 0.3 <= sample.offset_hi_s + 1e-6


def test_a_hashed_directory_without_every_ca_of_the_bundle_is_not_used_alone(tmp_path, monkeypatch):
    bundle = hashed_store(tmp_path / "certs", trustme.CA(), trustme.CA(), hashed=1)
    use_store(monkeypatch, bundle)
    assert http._system_capath() is None
    assert _tls_context(None).cert_store_stats()["x509_ca"] == 2  # loaded whole, as load_default_certs does


def test_a_bundle_outside_the_hashed_directory_is_loaded_whole(tmp_path, monkeypatch):
    bundle = hashed_store(tmp_path / "certs", trustme.CA())
    elsewhere = tmp_path / "bundle.pem"
    elsewhere.write_bytes(bundle.read_bytes())
    monkeypatch.setenv("SSL_CERT_FILE", str(elsewhere))
    monkeypatch.setenv("SSL_CERT_DIR", str(bundle.parent))
    assert http._system_capath() is None
    assert _tls_context(None).cert_store_stats()["x509_ca"] == 1


def test_a_complete_hashed_store_is_used_alone(tmp_path, monkeypatch):
    bundle = hashed_store(tmp_path / "certs", trustme.CA(), trustme.CA())
    use_store(monkeypatch, bundle)
    assert http._system_capath() == str(bundle.parent)


def test_a_directory_bundle_is_loaded_as_a_capath(tmp_path):
    context = _tls_context(str(tmp_path))  # OpenSSL reads a hashed directory lazily, at verification
    assert context.verify_flags & NO_CHECK_TIME


def test_a_bundle_without_certificates_cannot_be_loaded(tmp_path):
    empty = tmp_path / "empty.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ssl.SSLError):
        _tls_context(str(empty))


# --- reading the verified chain ---------------------------------------------------------------------------------


def test_the_validity_of_the_verified_chain_is_read_after_the_handshake():
    not_before, not_after = days_from_now(-5), days_from_now(40)
    with running(tls=True, not_before=not_before, not_after=not_after) as server:
        assert server.ca_bundle is not None
        context = _tls_context(server.ca_bundle)
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            validity = http._validity(tls)
    assert validity is not None
    # The leaf bounds both ends (trustme's CA is valid 2000–3000); seconds, as the certificate stores them.
    assert validity.not_before_s == int(not_before.timestamp())
    assert validity.not_after_s == int(not_after.timestamp())
    assert validity.starts_with == validity.ends_with == "the server's certificate"
    infos, whole = http._chain_info(tls)  # closed now: nothing to read, and no exception
    assert (infos, whole) == ([], False)


def test_on_this_python_the_whole_verified_chain_is_read():
    """3.11 has SSLSocket.get_verified_chain() only privately (public from 3.13); timeguard uses it when present."""
    root = trustme.CA()
    child = root.create_child_ca()
    with running(tls=True, ca=child) as server:
        assert server.ca_bundle is not None
        context = _tls_context(server.ca_bundle)
        with (
            socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            infos, whole = http._chain_info(tls)
            validity = http._validity(tls)
    assert whole, "this Python has no _sslobj.get_verified_chain(): only the leaf would be judged"
    assert len(infos) == 3  # leaf, intermediate, root (the trust anchor is part of the verified chain)
    assert validity is not None
    assert validity.whole_chain


def test_without_a_verified_chain_the_leaf_is_judged():
    class LeafOnly:  # what an SSL object without get_verified_chain (Python < 3.10, SSLTransport) offers
        def getpeercert(self) -> dict[str, Any]:
            return {"notBefore": "Jan  1 00:00:00 2026 GMT", "notAfter": "Apr  1 00:00:00 2026 GMT"}

    validity = http._validity(LeafOnly())
    assert validity == _Validity(
        datetime(2026, 1, 1, tzinfo=UTC).timestamp(),
        datetime(2026, 4, 1, tzinfo=UTC).timestamp(),
        "the server's certificate",
        "the server's certificate",
        whole_chain=False,
    )


def test_unreadable_validity_is_none():
    class NoCert:
        def getpeercert(self) -> dict[str, Any]:
            return {}

    class BadDates:
        def getpeercert(self) -> dict[str, Any]:
            return {"notBefore": "yesterday", "notAfter": "tomorrow"}

    assert http._validity(NoCert()) is None
    assert http._validity(BadDates()) is None
    assert http._validity(object()) is None


# --- the judgements ---------------------------------------------------------------------------------------------


def validity(not_before_s: float, not_after_s: float) -> _Validity:
    return _Validity(not_before_s, not_after_s, "the server's certificate", "its CA certificate 'X'", True)


def test_expired_before_the_release_is_judged_on_the_earliest_end_of_the_chain():
    assert _expired_before_release(validity(0, EARLIEST_PLAUSIBLE_S)) is None  # still valid at the release
    why = _expired_before_release(validity(0, EARLIEST_PLAUSIBLE_S - 1))
    assert why is not None
    assert why.startswith("its CA certificate 'X' expired 2025-12-31T23:59:59Z, before this release was built")


@pytest.mark.parametrize(
    ("date_offset_s", "outside"),
    [(-1, "before"), (0, None), (500, None), (1000, None), (1001, "after")],
)
def test_the_date_must_lie_within_the_chain_validity_bounds_included(date_offset_s, outside):
    start = EARLIEST_PLAUSIBLE_S + 86_400
    why = _date_outside(validity(start, start + 1000), start + date_offset_s, "Fri, 02 Jan 2026 00:00:00 GMT")
    if outside is None:
        assert why is None
    else:
        assert why is not None
        assert why.startswith(f"the server's Date 'Fri, 02 Jan 2026 00:00:00 GMT' is {outside} ")
        assert "an honest server never serves a time outside its own certificate's validity" in why


def test_a_connection_passed_in_still_has_its_dates_checked():
    """A Date outside the certificate's validity is refused through a caller's connection too."""
    with (
        running(tls=True, offset_s=60 * 86_400, not_before=days_from_now(-30), not_after=days_from_now(30)) as server,
        http.Connection(server.url, ca_bundle=server.ca_bundle) as connection,
    ):
        sample = http.query_http(server.url, requests_count=2, connection=connection)
    assert sample.failure is not None
    assert sample.reason.startswith("the server's Date ")
    assert "is after the server's certificate expired" in sample.reason

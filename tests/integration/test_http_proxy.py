"""The HTTP source through the environment's proxy (HTTPS_PROXY, HTTP_PROXY, NO_PROXY), as it went with requests'
``trust_env``: a real tunnelling proxy on loopback (tests/support/fake_proxy.py) in front of a real Date server."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import pytest

from tests.support.fake_http import running
from tests.support.fake_proxy import proxying
from timeguard.measure.http import _Origin, query_http
from timeguard.measure.proxy import _bypassed
from timeguard.model import SourceState


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Start from an environment without any *_proxy variable (the host's own must not leak in)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)
    yield monkeypatch


def contains(sample, offset_s: float) -> bool:
    return sample.offset_lo_s - 1e-6 <= offset_s <= sample.offset_hi_s + 1e-6


def test_https_goes_through_the_tunnel_verified_end_to_end_with_one_connect(no_proxy_settings):
    """The private CA of the source, the certificate's name (SNI) and its times are checked through the tunnel."""
    with running(tls=True, offset_s=0.4) as server, proxying() as proxy:
        no_proxy_settings.setenv("HTTPS_PROXY", proxy.url)
        sample = query_http(server.url, ca_bundle=server.ca_bundle, requests_count=3)
    assert sample.usable, sample.reason
    assert contains(sample, 0.4)
    assert sample.address == f"127.0.0.1:{server.port}"
    assert proxy.requests == [("CONNECT", f"127.0.0.1:{server.port}", None)]  # one tunnel, kept alive
    assert len(server.served) == 3
    assert server.connections == 1


def test_an_untrusted_certificate_through_the_tunnel_is_still_refused(no_proxy_settings, tmp_path):
    import trustme

    other = tmp_path / "other.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with running(tls=True) as server, proxying() as proxy:
        no_proxy_settings.setenv("https_proxy", proxy.url)
        sample = query_http(server.url, ca_bundle=str(other))
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason.startswith(f"TLS certificate verification failed for 127.0.0.1:{server.port}: unable to get")
    assert sample.reason.endswith(f"; through proxy 127.0.0.1:{proxy.url.rsplit(':', 1)[1]} (from https_proxy)")
    assert server.served == []


def test_plain_http_goes_to_the_proxy_in_absolute_form(no_proxy_settings):
    with running(offset_s=-0.3) as server, proxying() as proxy:
        no_proxy_settings.setenv("HTTP_PROXY", proxy.url)
        no_proxy_settings.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # not for http:// URLs
        sample = query_http(server.url, allow_plain_http=True, requests_count=2)
    assert sample.usable, sample.reason
    assert contains(sample, -0.3)
    assert proxy.requests[0] == ("HEAD", server.url, None)


def test_credentials_in_the_proxy_url_are_sent_as_basic_authorization(no_proxy_settings):
    with running(tls=True) as server, proxying() as proxy:
        no_proxy_settings.setenv("ALL_PROXY", proxy.url.replace("http://", "http://time%40ops:s3cr%3At@"))
        sample = query_http(server.url, ca_bundle=server.ca_bundle, requests_count=1)
    assert sample.usable, sample.reason
    expected = "Basic " + base64.b64encode(b"time@ops:s3cr:t").decode()
    assert proxy.requests == [("CONNECT", f"127.0.0.1:{server.port}", expected)]


def test_a_refused_tunnel_says_which_proxy_and_why(no_proxy_settings):
    with running(tls=True) as server, proxying(refuse="407 Proxy Authentication Required") as proxy:
        no_proxy_settings.setenv("HTTPS_PROXY", proxy.url)
        sample = query_http(server.url, ca_bundle=server.ca_bundle)
    port = proxy.url.rsplit(":", 1)[1]
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason == (
        f"proxy 127.0.0.1:{port} (from HTTPS_PROXY) refused the tunnel to 127.0.0.1:{server.port}: "
        "407 Proxy Authentication Required"
    )
    assert server.served == []


@pytest.mark.parametrize("no_proxy", ["127.0.0.0/8", "127.0.0.1", "*", "example.org, 127.0.0.1"])
def test_no_proxy_sends_the_source_direct(no_proxy_settings, no_proxy):
    with running(tls=True, offset_s=0.1) as server, proxying() as proxy:
        no_proxy_settings.setenv("HTTPS_PROXY", proxy.url)
        no_proxy_settings.setenv("NO_PROXY", no_proxy)
        sample = query_http(server.url, ca_bundle=server.ca_bundle, requests_count=1)
    assert sample.usable, sample.reason
    assert proxy.requests == []


def test_a_socks_proxy_is_refused_before_anything_is_sent(no_proxy_settings):
    with running(tls=True) as server:
        no_proxy_settings.setenv("HTTPS_PROXY", "socks5://127.0.0.1:1080")
        sample = query_http(server.url, ca_bundle=server.ca_bundle)
    assert sample.failure is SourceState.UNREACHABLE
    assert sample.reason == (
        "HTTPS_PROXY=socks5://127.0.0.1:1080: only http:// proxies are supported, not socks5://; nothing was sent"
    )
    assert server.connections == 0


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "direct"),
    [
        ("time.example.org", 443, "example.org", True),
        ("time.example.org", 443, ".example.org", True),
        ("example.org", 443, "example.org", True),
        ("badexample.org", 443, "example.org", False),
        ("time.example.org", 443, "example.org:443", True),
        ("time.example.org", 8443, "example.org:443", False),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("::1", 443, "::1", True),
        ("2001:db8::5", 443, "2001:db8::/32", True),
        ("TIME.Example.ORG", 443, "example.org", True),
        ("time.example.org", 443, "", False),
        ("time.example.org", 443, " , ", False),
        ("anything", 1, "*", True),
    ],
)
def test_no_proxy_matching(host, port, no_proxy, direct):
    assert _bypassed(host, port, no_proxy) is direct


@pytest.mark.parametrize(
    ("url", "absolute"),
    [
        ("http://time.example.org/", "http://time.example.org/"),
        ("http://time.example.org:80/a?b=1#frag", "http://time.example.org/a?b=1"),
        ("http://time.example.org:8080/", "http://time.example.org:8080/"),
        ("http://[::1]:8080/x y", "http://[::1]:8080/x%20y"),
        ("https://[2001:db8::1]/", "https://[2001:db8::1]/"),
    ],
)
def test_the_absolute_form_writes_the_url_as_given_without_the_default_port_or_fragment(url, absolute):
    origin = _Origin.of(url)
    assert origin.url_base + origin.target(url) == absolute

"""sources.nts: typed like the other source kinds, errors with key path and line, the extra named when missing."""

from __future__ import annotations

import importlib.util

import pytest

from timeguard import config


def test_nts_entries_are_typed_with_their_defaults():
    cfg = config.loads("sources:\n  nts:\n    - host: nts.example.net\n    - {host: 192.0.2.1, port: 1123, "
                       "ke_port: 14460, name: lab, operator: us}\n")
    first, second = cfg.sources.nts
    assert (first.host, first.port, first.ke_port, first.ca_bundle, first.label) == ("nts.example.net", 123, 4460,
                                                                                     None, "nts.example.net")
    assert (second.port, second.ke_port, second.label, second.operator) == (1123, 14460, "lab", "us")


def test_the_defaults_name_nts_servers_of_several_operators():
    from timeguard.model import operator_of

    nts = config.loads("").sources.nts
    assert len({operator_of(s.host) for s in nts}) >= 4


def test_a_file_naming_its_sources_without_nts_gets_no_public_nts_servers():
    assert config.loads("sources: {ntp: [{host: 127.0.0.1}]}\n").sources.nts == ()


@pytest.mark.parametrize(("text", "message"), [
    ("sources:\n  nts:\n    - host: a\n      ke_port: 0\n", "t.yaml:4: sources.nts[0].ke_port: must be ≥ 1"),
    ("sources:\n  nts:\n    - {port: 1}\n", "t.yaml:3: sources.nts[0].host"),
    ("sources:\n  nts:\n    - {host: a}\n    - {host: a}\n", "same source as sources.nts[0] (a:4460)"),
    ("sources:\n  nts:\n    - {host: a, ca_bundle: /nonexistent/ca.pem}\n",
     "sources.nts[0].ca_bundle: cannot read the CA bundle '/nonexistent/ca.pem'"),
    ("sources:\n  nts:\n    - {host: a, colour: red}\n", "sources.nts[0].colour"),
])
def test_bad_nts_entries_are_named_with_path_and_line(text, message):
    with pytest.raises(config.ConfigError) as info:
        config.loads(text, "t.yaml")
    assert message in str(info.value)


def test_a_missing_extra_is_a_config_error_naming_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "OpenSSL" else real(name, *a))
    with pytest.raises(config.ConfigError) as info:
        config.loads("sources:\n  nts:\n    - host: a\n", "t.yaml")
    assert "sources.nts: NTS sources need OpenSSL" in str(info.value)
    assert "pip install 'timeguard[nts]'" in str(info.value)
    config.loads("sources: {ntp: [{host: a}], nts: []}\n")  # without NTS sources the extra is not needed


@pytest.mark.parametrize("text", ["", "state_dir: /tmp/x\n", "thresholds: {warning_s: 1}\n", "hooks: []\n"])
def test_without_the_extra_the_defaults_leave_their_nts_servers_out_and_say_so(monkeypatch, text):
    """``pip install timeguard`` then ``timeguard check`` on the defaults works: NTP + HTTPS, with a warning that names
    the extra — a missing extra is an error only where a file asks for NTS sources itself."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "cryptography" else real(name, *a))
    cfg = config.loads(text, "t.yaml")
    assert cfg.sources.nts == () and cfg.sources.ntp and cfg.sources.http
    [warning] = [w for w in cfg.warnings if w.path == "sources.nts"]
    assert "left out" in warning.message and "pip install 'timeguard[nts]'" in warning.message

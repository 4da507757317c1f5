"""NTS keys kept across daemon restarts (timeguard/measure/nts/keep.py): the round trip on real sessions, and every
class of bad file — each a problem naming the file and the field, nothing adopted, nothing raised.

(The daemon's restart against a real chronyd NTS server: tests/integration/test_nts_chrony.py.)"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from timeguard.measure.nts import keep
from timeguard.measure.nts.ke import KeResult, Validity
from timeguard.measure.nts.records import Aead
from timeguard.measure.nts.source import JAR_SIZE, NtsSession

C2S, S2C = bytes(range(32)), bytes(range(32, 64))
COOKIES = [bytes([n]) * 100 for n in range(1, 8)]


def ke(**changes: Any) -> KeResult:
    fields = {"aead": Aead.AEAD_AES_SIV_CMAC_256, "c2s_key": C2S, "s2c_key": S2C, "cookies": tuple(COOKIES),
              "ntp_host": "ntp.example.net", "ntp_port": 123, "validity": Validity(1.7e9, 1.9e9),
              "address": "192.0.2.4:4460", "monotonic_s": 0.0}
    return KeResult(**{**fields, **changes})


def holding(host: str = "nts.example.net", **session: Any) -> NtsSession:
    s = NtsSession(host, **session)
    assert s.adopt(ke(), list(COOKIES), 3600.0)
    return s


def entry(**changes: Any) -> dict[str, Any]:
    exported = holding().export()
    assert exported is not None
    return {**exported, **changes}


def write(path: Path, data: Any, mode: int = 0o600) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    path.chmod(mode)
    return path


def test_a_session_s_keys_and_cookies_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / keep.FILENAME
    before = [holding(), holding("other.example.org", ke_port=4461), NtsSession("no-keys.example")]
    assert keep.save(path, before) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert C2S.hex() in path.read_text()  # the keys are what is kept: hence 0600

    after = [NtsSession("nts.example.net"), NtsSession("other.example.org", ke_port=4461),
             NtsSession("other.example.org", ke_port=4462), NtsSession("no-keys.example")]
    assert keep.load(path, after) == (2, [])
    restored = after[0]
    assert restored.ke is not None
    assert (restored.ke.c2s_key, restored.ke.s2c_key, restored.ke.aead) == (C2S, S2C, Aead.AEAD_AES_SIV_CMAC_256)
    assert (restored.ke.ntp_host, restored.ke.ntp_port, restored.ke.address) == ("ntp.example.net", 123,
                                                                                    "192.0.2.4:4460")
    assert restored.ke.validity == Validity(1.7e9, 1.9e9)  # every later sample is still judged against it
    assert list(restored.cookies) == COOKIES
    assert after[2].ke is None and after[3].ke is None  # another KE port; never had keys
    assert restored._kept is not None and "7 cookies kept from before the restart" in restored._kept


def test_keys_go_to_the_same_server_only(tmp_path: Path) -> None:
    path = tmp_path / keep.FILENAME
    keep.save(path, [holding(port=123, ca_bundle="/etc/a.pem")])
    others = [NtsSession("nts.example.net", port=1123, ca_bundle="/etc/a.pem"),
              NtsSession("nts.example.net", ca_bundle="/etc/b.pem"), NtsSession("nts.example.net")]
    assert keep.load(path, others) == (0, [])
    assert all(s.ke is None for s in others)


def test_a_session_with_keys_of_its_own_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / keep.FILENAME
    keep.save(path, [holding()])
    mine = NtsSession("nts.example.net")
    own = ke(c2s_key=bytes(32), s2c_key=bytes(32))
    assert mine.adopt(own, [b"x" * 10], 0.0)
    assert keep.load(path, [mine]) == (0, [])
    assert mine.ke is own


def test_no_file_is_no_problem_and_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    assert keep.load(tmp_path / "absent.json", [NtsSession("a")]) == (0, [])
    with pytest.raises(keep.KeepError, match=r"nope/nts-keys.json: cannot write \(No such file or directory\)"):
        keep.save(tmp_path / "nope" / keep.FILENAME, [holding()])


GOOD = {"format": keep.FORMAT}


@pytest.mark.parametrize(("change", "field", "why"), [
    ({"host": ""}, "host", "not a host name"),
    ({"host": 5}, "host", "not a host name"),
    ({"ntp_host": None}, "ntp_host", "not a host name"),
    ({"port": 0}, "port", "0 is not a port"),
    ({"ke_port": 70000}, "ke_port", "not a port"),
    ({"ntp_port": True}, "ntp_port", "True is not a port"),
    ({"ntp_port": "123"}, "ntp_port", "not a port"),
    ({"ca_bundle": 3}, "ca_bundle", "not a path"),
    ({"aead": 16}, "aead", "16 is not an AEAD algorithm"),
    ({"aead": "x" * 500}, "aead", "..."),  # a long value is cut, not echoed whole
    ({"c2s_key": "zz"}, "c2s_key", "not hexadecimal"),
    ({"s2c_key": "00" * 16}, "s2c_key", "16 bytes, not 32"),
    ({"c2s_key": None}, "c2s_key", "not hexadecimal"),
    ({"not_before_s": float("nan")}, "not_before_s", "not a finite number"),
    ({"not_after_s": "never"}, "not_after_s", "not a finite number"),
    ({"not_before_s": 2e9, "not_after_s": 1e9}, "not_before_s", "after not_after_s"),
    ({"ke_age_s": -1}, "ke_age_s", "negative"),
    ({"cookies": []}, "cookies", "not a non-empty list"),
    ({"cookies": "00"}, "cookies", "not a non-empty list"),
    ({"cookies": ["00"] * (JAR_SIZE + 1)}, "cookies", f"more than the {JAR_SIZE}"),
    ({"cookies": ["00", "xyz"]}, "cookies[1]", "not hexadecimal"),
    ({"cookies": [""]}, "cookies[0]", "0 bytes"),
    ({"cookies": ["00" * (keep.MAX_COOKIE_BYTES + 1)]}, "cookies[0]", f"{keep.MAX_COOKIE_BYTES + 1} bytes"),
])
def test_a_bad_field_names_the_entry_and_the_field_and_adopts_nothing(tmp_path: Path, change: dict[str, Any],
                                                                      field: str, why: str) -> None:
    path = write(tmp_path / keep.FILENAME, {**GOOD, "sessions": [entry(**change), entry(host="b.example")]})
    session, other = NtsSession("nts.example.net"), NtsSession("b.example")
    restored, problems = keep.load(path, [session, other])
    assert restored == 1 and other.ke is not None  # the good entry beside it is still used
    assert session.ke is None
    (problem,) = problems
    assert problem.startswith(f"{path}: sessions[0].{field}: ") and why in problem, problem
    assert C2S.hex() not in problem and S2C.hex() not in problem  # a key is never echoed


@pytest.mark.parametrize(("content", "why"), [
    ("", "not JSON (Expecting value at line 1, column 1)"),
    ("{\"format\": ", "not JSON"),
    (b"\xff\xfe garbage", "not UTF-8 text (byte 0)"),
    ("[]", "format 'list', not"),
    (json.dumps({"format": "timeguard-nts-keys/0", "sessions": []}), "format 'timeguard-nts-keys/0'"),
    (json.dumps({"format": keep.FORMAT}), "sessions: not a list"),
    (json.dumps({"format": keep.FORMAT, "sessions": [1]}), "sessions[0]: not a mapping"),
])
def test_a_bad_file_is_said_with_its_path_and_costs_a_key_exchange(tmp_path: Path, content: str | bytes,
                                                                    why: str) -> None:
    path = tmp_path / keep.FILENAME
    if isinstance(content, bytes):
        path.write_bytes(content)
        path.chmod(0o600)
    else:
        write(path, content)
    session = NtsSession("nts.example.net")
    restored, problems = keep.load(path, [session])
    assert restored == 0 and session.ke is None
    assert len(problems) == 1 and problems[0].startswith(f"{path}: ") and why in problems[0], problems


def test_keys_others_could_read_or_write_are_not_believed(tmp_path: Path) -> None:
    path = tmp_path / keep.FILENAME
    keep.save(path, [holding()])
    for mode in (0o644, 0o620, 0o604):
        path.chmod(mode)
        session = NtsSession("nts.example.net")
        restored, [problem] = keep.load(path, [session])
        assert restored == 0 and session.ke is None
        assert f"mode {mode:04o}" in problem and "must be the daemon's own, 0600" in problem
    path.chmod(0o600)
    if os.geteuid() == 0:  # another owner (root may chown; elsewhere the file cannot be another's)
        os.chown(path, 65534, 65534)
        session = NtsSession("nts.example.net")
        restored, [problem] = keep.load(path, [session])
        assert restored == 0 and "owned by uid 65534" in problem


def test_a_symlink_or_a_directory_is_not_read(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    keep.save(tmp_path / "real.json", [holding()])
    link = tmp_path / keep.FILENAME
    link.symlink_to(real)
    restored, [problem] = keep.load(link, [NtsSession("nts.example.net")])
    assert restored == 0 and problem.startswith(f"{link}: cannot read")
    folder = tmp_path / "dir"
    folder.mkdir(mode=0o700)
    restored, [problem] = keep.load(folder, [NtsSession("nts.example.net")])
    assert restored == 0 and problem == f"{folder}: not a regular file"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                  max_size=4), max_leaves=12)


@given(fields=st.dictionaries(st.sampled_from(sorted(entry())), JSON, max_size=6))
def test_any_json_in_an_entry_is_a_problem_or_a_session_never_an_exception(fields: dict[str, Any]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp) / keep.FILENAME, {**GOOD, "sessions": [entry(**fields)]})
        session = NtsSession("nts.example.net")
        restored, problems = keep.load(path, [session])
        assert restored + len(problems) <= 1
        assert (session.ke is not None) == (restored == 1)

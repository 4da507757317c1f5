"""chronyd as an honest or lying loopback NTP server (harness.md R6), optionally serving NTS (RFC 8915)."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.realprogs.net import NtpReply, free_port, ntp_query
from tests.support.realprogs.processes import SETPRIV_NO_SYS_TIME, LoopbackServer, ManagedProcess
from tests.support.realprogs.scratch import scratch_dir

if TYPE_CHECKING:
    from tests.support.realprogs.certs import TlsFiles
    from tests.support.realprogs.faketime import FakeClock


class ChronyServer(LoopbackServer):
    """A real chronyd ``-x -d`` serving NTP on loopback only; lying when a FakeClock is given.

    A lying server is only correct for |offset| ≥ 1 s: below that chronyd's kernel RX timestamp is real and the
    client sees offset f/2 and delay −f (harness.md §3). Use a fake server in the tests for sub-second cases.
    """

    port_kind = "udp"
    bind_error = "Could not open"
    check_fixed_port = True  # chronyd binds with SO_REUSEPORT: on a taken port it would share the queries

    def __init__(
        self,
        port: int | None = None,
        clock: FakeClock | None = None,
        local_stratum: int = 2,
        bind: str = "127.0.0.1",
        synchronised: bool = True,
        *,
        nts: TlsFiles | None = None,
        nts_port: int | None = None,
        extra_conf: tuple[str, ...] = (),
    ) -> None:
        if not (bind.startswith("127.") or bind == "::1"):
            raise ValueError(f"loopback only, got bind={bind!r}")
        super().__init__(port, clock, bind)
        self.local_stratum = local_stratum
        self.synchronised = synchronised
        self.extra_conf = extra_conf
        self.dir = scratch_dir("chrony")
        try:
            user = pwd.getpwnam("_chrony")
        except KeyError:
            user = None
        if user is not None and os.geteuid() == 0:
            # chronyd drops to _chrony and then writes its drift file here.
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        # NTS: key and certificate copied into the scratch dir, which is also the ntsdumpdir (server keys).
        self.nts = nts if nts is None else self._own_copy(nts, user)
        self.nts_port = nts_port if nts_port is not None or nts is None else free_port("tcp", bind)

    @property
    def bind(self) -> str:
        return self.host

    @property
    def address(self) -> tuple[str, int]:
        return (self.bind, self.port)

    def _write_conf(self) -> Path:
        lines = [
            f"port {self.port}",
            f"bindaddress {self.bind}",
            f"allow {self.bind}",
            # No trailing comments: chrony 4.3 refuses "local stratum 2  # ..." (Could not parse).
            *([f"local stratum {self.local_stratum}"] if self.synchronised else []),
            "cmdport 0",
            f"pidfile {self.dir}/chronyd.pid",
            f"driftfile {self.dir}/drift",
            *self._nts_lines(),
            *self.extra_conf,
        ]
        conf = self.dir / "chrony.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o644)
        return conf

    def _own_copy(self, tls: TlsFiles, user: pwd.struct_passwd | None) -> TlsFiles:
        """The key and certificate in the scratch dir, readable by _chrony: chronyd's NTS-KE helper loads them after
        dropping privileges ("Could not set credentials : Error while reading file" otherwise)."""
        copies = type(tls)(tls.ca_bundle, self.dir / "nts.crt", self.dir / "nts.key")
        for src, dst in ((tls.cert, copies.cert), (tls.key, copies.key)):
            shutil.copyfile(src, dst)
            dst.chmod(0o600 if dst == copies.key else 0o644)
            if user is not None and os.geteuid() == 0:
                os.chown(dst, user.pw_uid, user.pw_gid)
        return copies

    def _nts_lines(self) -> list[str]:
        if self.nts is None:
            return []
        return [
            f"ntsport {self.nts_port}",
            f"ntsserverkey {self.nts.key}",
            f"ntsservercert {self.nts.cert}",
            f"ntsdumpdir {self.dir}",
        ]

    def _describe(self) -> str:
        return f"chronyd on {self.bind}:{self.port}"

    def _launch(self) -> ManagedProcess:
        conf = self._write_conf()
        family_flag = "-6" if ":" in self.bind else "-4"  # otherwise chronyd also binds the other wildcard
        return ManagedProcess.start(
            ["chronyd", "-x", "-d", family_flag, "-f", str(conf)],
            name=f"chronyd:{self.port}",
            clock=self.clock,
            log_path=self.dir / "chronyd.log",
        )

    def _probe(self) -> NtpReply | None:
        reply = ntp_query(self.bind, self.port, timeout_s=0.2)
        # A `local` server may need a moment before it claims to be synchronised.
        return reply if (reply.leap != 3) == self.synchronised else None


_WRONG_BY = re.compile(r"System clock wrong by (-?[0-9.]+) seconds")


def chronyd_nts_offset(server: ChronyServer, ca_bundle: Path, timeout_s: float = 10.0) -> float | None:
    """The offset ``chronyd -Q`` measures as an NTS client of ``server`` (true − host; None: no answer).

    Query only (``-Q`` never sets the clock), under setpriv without CAP_SYS_TIME like every daemon here; the CA is
    given with ``ntstrustedcerts``, and its NTS cookies go to a scratch ``ntsdumpdir``.
    """
    if server.nts is None:
        raise ValueError("the server does not serve NTS (ChronyServer(nts=...))")
    work = scratch_dir("chronyq")
    try:
        user = pwd.getpwnam("_chrony")
        os.chown(work, user.pw_uid, user.pw_gid)
    except (KeyError, PermissionError):
        pass
    argv = [*SETPRIV_NO_SYS_TIME, "chronyd", "-Q", "-f", "/dev/null", "-t", f"{timeout_s:g}",
            f"server {server.bind} port {server.port} nts ntsport {server.nts_port} iburst maxsamples 4",
            f"ntstrustedcerts {ca_bundle}", f"ntsdumpdir {work}", f"pidfile {work}/q.pid"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s + 30, check=False)
    found = _WRONG_BY.findall(done.stderr + done.stdout)
    return float(found[-1]) if found else None

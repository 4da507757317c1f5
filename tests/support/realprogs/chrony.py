"""chronyd as an honest or lying loopback NTP server (harness.md R6)."""

from __future__ import annotations

import os
import pwd
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.realprogs.net import NtpReply, ntp_query
from tests.support.realprogs.processes import LoopbackServer, ManagedProcess
from tests.support.realprogs.scratch import scratch_dir

if TYPE_CHECKING:
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
    ) -> None:
        if not (bind.startswith("127.") or bind == "::1"):
            raise ValueError(f"loopback only, got bind={bind!r}")
        super().__init__(port, clock, bind)
        self.local_stratum = local_stratum
        self.synchronised = synchronised
        self.dir = scratch_dir("chrony")
        try:
            user = pwd.getpwnam("_chrony")
        except KeyError:
            user = None
        if user is not None and os.geteuid() == 0:
            # chronyd drops to _chrony and then writes its drift file here.
            os.chown(self.dir, user.pw_uid, user.pw_gid)

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
        ]
        conf = self.dir / "chrony.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o644)
        return conf

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

"""HTTP Date sources as real programs: nginx and ``python -m http.server`` on loopback (harness.md R8)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from tests.support.realprogs.net import http_head, probe_context
from tests.support.realprogs.processes import LoopbackServer, ManagedProcess, log_tail
from tests.support.realprogs.scratch import scratch_dir

if TYPE_CHECKING:
    from tests.support.realprogs.faketime import FakeClock


class NginxServer(LoopbackServer):
    """A real nginx (``daemon off``, one worker) serving a small index on 127.0.0.1; its Date follows ``clock``."""

    def __init__(
        self,
        port: int | None = None,
        clock: FakeClock | None = None,
        tls: tuple[Path | str, Path | str] | None = None,
    ) -> None:
        super().__init__(port, clock, "127.0.0.1")
        self.tls = tls
        self.dir = scratch_dir("nginx")

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}/"

    def _write_conf(self) -> Path:
        d = self.dir
        (d / "html").mkdir(exist_ok=True)
        (d / "html" / "index.html").write_text("timeguard test server\n")
        listen = f"listen {self.host}:{self.port}{' ssl' if self.tls else ''};"
        tls_lines = f"    ssl_certificate {self.tls[0]};\n    ssl_certificate_key {self.tls[1]};\n" if self.tls else ""
        # The env lines are REQUIRED: nginx wipes the worker's environment, so without them the worker (which
        # writes the Date header) would tell real time. Harmless when no clock is given (unset → not passed).
        conf = f"""env LD_PRELOAD;
env FAKETIME_TIMESTAMP_FILE;
env FAKETIME_NO_CACHE;
env FAKETIME_DONT_FAKE_MONOTONIC;
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
  access_log off;
  default_type text/plain;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    {listen}
{tls_lines}    root {d}/html;
  }}
}}
"""
        path = d / "nginx.conf"
        path.write_text(conf)
        return path

    def _describe(self) -> str:
        return f"nginx on {self.url}"

    def _launch(self) -> ManagedProcess:
        conf = self._write_conf()
        # -e: nginx opens its default /var/log/nginx/error.log before reading the config otherwise.
        return ManagedProcess.start(
            ["nginx", "-p", str(self.dir), "-c", str(conf), "-e", str(self.dir / "error.log")],
            name=f"nginx:{self.port}",
            clock=self.clock,
            log_path=self.dir / "nginx.log",
            stop_signal=signal.SIGQUIT,  # graceful: the worker finishes and exits with the master
        )

    def _probe(self) -> int:
        return http_head(self.host, self.port, probe_context(bool(self.tls)))

    def _log(self, process: ManagedProcess) -> str:
        return process.log_tail() + log_tail(self.dir / "error.log")

    def _ready(self, process: ManagedProcess) -> None:
        process.adopt_children()  # the worker: stop() makes sure it is gone too


class PythonDateServer(LoopbackServer):
    """``python -m http.server`` on 127.0.0.1 under ``clock``: a second, independent HTTP Date implementation."""

    def __init__(self, port: int | None = None, clock: FakeClock | None = None) -> None:
        super().__init__(port, clock, "127.0.0.1")
        self.dir = scratch_dir("httpserver")
        (self.dir / "index.html").write_text("timeguard test server\n")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def _describe(self) -> str:
        return f"http.server on {self.url}"

    def _launch(self) -> ManagedProcess:
        return ManagedProcess.start(
            [sys.executable, "-m", "http.server", str(self.port), "--bind", self.host, "-d", str(self.dir)],
            name=f"http.server:{self.port}",
            clock=self.clock,
            log_path=self.dir.parent / f"{self.dir.name}.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def _probe(self) -> int:
        return http_head(self.host, self.port, None)

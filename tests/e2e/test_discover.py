"""``timeguard discover`` against real running beats (issue 11).

Three real ``celery beat`` processes, started by this module (setpriv without CAP_SYS_TIME, libfaketime at +0, as
the e2e harness starts every beat) and stopped by PID:

* ``explicit``: the ``celery`` script (its shebang is the venv's interpreter) ``-A beatproject beat -S
  django_celery_beat.schedulers:DatabaseScheduler --max-interval 1`` on a seeded SQLite database;
* ``from_settings``: the harness's own ``python -m celery -A beatproject beat`` with no ``-S`` and beat's default
  max interval — the scheduler is named only in the project's settings (``CELERY_BEAT_SCHEDULER``);
* ``shelve``: a plain celery app (no Django) with celery's default PersistentScheduler, ``-s DIR/celerybeat-schedule``,
  in-memory broker;
* ``worker``: the same app as ``celery worker -B -c 2``: a worker, its embedded beat's process and two pool
  processes, all with one command line — one beat.

Then ``timeguard discover`` (a subprocess, as a person runs it): as root it reads everything and proposes a hook
for each DatabaseScheduler beat; as ``nobody`` it lists the root-owned beats as not inspectable and says why;
``--write --yes`` puts the hooks into a scratch configuration that still validates.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from tests.support import beat as beatlib
from tests.support.beat import PROJECT_DIR, BeatDatabase, BeatProcess
from tests.support.realprogs import FakeClock, ManagedProcess, find_libfaketime, run_under_clock, scratch_dir
from tests.support.require import need, need_program

VENV_BIN = Path(sys.executable).parent
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--bounding-set", "-sys_time",
             "--inh-caps", "-sys_time", "--"]


class ExplicitBeat(BeatProcess):
    """The beat a Django user starts by the book: the ``celery`` script, the scheduler on the command line, and
    no DJANGO_SETTINGS_MODULE in its environment — beatproject/celery.py sets it for itself (setdefault)."""

    def command(self) -> list[str]:
        return [str(VENV_BIN / "celery"), "-A", "beatproject", "beat", "-l", "info", "--pidfile=",
                "-S", "django_celery_beat.schedulers:DatabaseScheduler", "--max-interval", "1"]

    def environment(self) -> dict[str, str]:
        return {k: v for k, v in super().environment().items() if k != "DJANGO_SETTINGS_MODULE"}


SHELVE_APP = textwrap.dedent("""\
    from celery import Celery

    app = Celery("shelveapp", broker="memory://")
    app.conf.beat_schedule = {"tick": {"task": "shelveapp.tick", "schedule": 30.0}}


    @app.task
    def tick():
        return None
""")


@dataclass
class Beats:
    db: BeatDatabase
    explicit: BeatProcess
    from_settings: BeatProcess
    shelve: ManagedProcess
    shelve_dir: Path
    worker: ManagedProcess
    worker_children: list[int]

    @property
    def pids(self) -> list[str]:
        out = []
        for proc in (self.explicit.process, self.from_settings.process, self.shelve):
            assert proc is not None
            out += ["--pid", str(proc.pid)]
        return out

    @property
    def worker_pids(self) -> list[str]:
        return [arg for pid in (self.worker.pid, *self.worker_children) for arg in ("--pid", str(pid))]


@pytest.fixture(scope="module")
def beats() -> Iterator[Beats]:
    need(find_libfaketime(), "libfaketime.so.1 is not installed (apt-get install faketime libfaketime)")
    need_program("setpriv", "util-linux")
    from tests.support.realprogs import default_ftshim

    clock = FakeClock(scratch_dir("discover-clock"), ftshim=default_ftshim())
    shelve_dir = scratch_dir("discover-shelve")
    (shelve_dir / "shelveapp.py").write_text(SHELVE_APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "TG_BEAT", "PYTHONPATH"))}
    with beatlib.seeded_database("sqlite") as db:
        explicit = ExplicitBeat(db, clock)
        from_settings = BeatProcess(db, clock, max_interval=None, loglevel="info")
        shelve = worker = None
        try:
            explicit.start()
            from_settings.start()
            shelve = run_under_clock(
                [sys.executable, "-m", "celery", "-A", "shelveapp", "beat", "-l", "info", "--pidfile=",
                 "-s", str(shelve_dir / "celerybeat-schedule")],
                clock, name="celery-beat:shelve", log_path=shelve_dir / "beat.log", env=env, cwd=str(shelve_dir))
            worker = run_under_clock(
                [sys.executable, "-m", "celery", "-A", "shelveapp", "worker", "-B", "-c", "2", "-l", "info",
                 "--pidfile=", "-s", str(shelve_dir / "worker-schedule")],
                clock, name="celery-worker-B", log_path=shelve_dir / "worker.log", env=env, cwd=str(shelve_dir),
                stop_timeout_s=15)
            for started in (explicit, from_settings):
                started.wait_log(r"beat: Starting", timeout_s=30)
            _wait_for(lambda: "beat: Starting" in (shelve_dir / "beat.log").read_text(), shelve, 30)
            _wait_for(lambda: len(psutil.Process(worker.pid).children()) >= 3, worker, 30)  # pool ×2 + beat
            children = worker.adopt_children()
            yield Beats(db, explicit, from_settings, shelve, shelve_dir, worker, children)
        finally:
            for proc in (explicit, from_settings, shelve, worker):
                if proc is not None:
                    proc.stop()


def _wait_for(condition: Any, proc: ManagedProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.alive(), f"{proc.name} exited:\n{proc.log_tail()}"
        assert time.monotonic() < deadline, f"{proc.name} did not start:\n{proc.log_tail()}"
        time.sleep(0.1)


def discover(*args: str, prefix: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(prefix or []), sys.executable, "-m", "timeguard", "discover", *args],
                          capture_output=True, text=True, timeout=60, check=False, cwd="/",
                          env={"PATH": "/usr/bin:/bin"})


def _by_pid(out: str) -> dict[int, dict[str, Any]]:
    return {b["pid"]: b for b in json.loads(out)["beats"]}


def test_finds_each_beat_with_its_scheduler_interval_settings_and_a_hook(beats: Beats) -> None:
    proc = discover("--json", *beats.pids)
    assert proc.returncode == 0, proc.stderr
    found = _by_pid(proc.stdout)
    assert beats.explicit.process and beats.from_settings.process
    assert set(found) == {beats.explicit.process.pid, beats.from_settings.process.pid, beats.shelve.pid}

    explicit = found[beats.explicit.process.pid]
    shebang = (VENV_BIN / "celery").read_text().splitlines()[0].removeprefix("#!").split()[0]
    assert explicit["form"] == "celery beat" and explicit["app"] == "beatproject"
    assert explicit["scheduler"] == "django_celery_beat.DatabaseScheduler"
    assert (explicit["scheduler_name"], explicit["scheduler_from"]) == (
        "django_celery_beat.schedulers:DatabaseScheduler", "command line")
    assert (explicit["max_interval_s"], explicit["max_interval_given"]) == (1.0, True)
    celery_py = PROJECT_DIR / "beatproject" / "celery.py"
    line = next(n for n, text in enumerate(celery_py.read_text().splitlines(), 1) if "setdefault(" in text)
    assert (explicit["settings"], explicit["settings_from"]) == ("beatproject.settings", f"{celery_py}:{line}")
    assert explicit["interpreter"] == shebang  # the venv's python as the script names it, not /proc/PID/exe
    assert explicit["cwd"] == str(PROJECT_DIR)
    assert explicit["database"] == beats.db.url and explicit["database_from"] == "environment $TG_BEAT_DATABASE_URL"
    assert explicit["user"] == "root" and explicit["inspectable"] and explicit["problems"] == []
    assert 0 < explicit["uptime_s"] < 120
    hook = explicit["hook"]
    # one hook for both beats on this database; it waits for the slower one (the default 5 s, not the 1 s)
    assert hook["type"] == "celery_beat" and hook["beat_max_interval_s"] == 5
    # beatproject's settings read TG_BEAT_* from the environment: the hook's settings reading gets them from a file
    # --write creates beside the configuration (here the default one)
    assert {"TG_BEAT_DATABASE_URL", "TG_BEAT_BROKER_URL"} <= set(explicit["settings_environment"])
    assert hook["django"] == {"settings": "beatproject.settings", "python": shebang, "path": [str(PROJECT_DIR)],
                              "environment_file": f"/etc/timeguard/{hook['name']}.env"}
    assert "settings_values" not in explicit  # the variables' values (passwords) are never printed
    assert hook.get("beat_service") == explicit["unit"]  # a unit only when the test itself runs in one

    settings = found[beats.from_settings.process.pid]
    assert settings["scheduler_name"] == "django_celery_beat.schedulers:DatabaseScheduler"
    settings_py = PROJECT_DIR / "beatproject" / "settings.py"
    line = next(n for n, text in enumerate(settings_py.read_text().splitlines(), 1)
                if text.startswith("CELERY_BEAT_SCHEDULER = "))
    assert settings["scheduler_from"] == f"{settings_py}:{line}"
    assert (settings["max_interval_s"], settings["max_interval_given"]) == (5.0, False)  # DatabaseScheduler's
    assert settings["interpreter"] == sys.executable
    assert settings["settings_from"] == "environment $DJANGO_SETTINGS_MODULE"
    assert settings["hook"] is None and settings["shares_hook"] == hook["name"]

    shelve = found[beats.shelve.pid]
    assert shelve["scheduler"] == "celery.PersistentScheduler" and shelve["scheduler_from"] == "celery's default"
    assert shelve["schedule_file"] == str(beats.shelve_dir / "celerybeat-schedule")
    assert (shelve["max_interval_s"], shelve["max_interval_given"]) == (300.0, False)
    assert shelve["settings"] is None and shelve["cwd"] == str(beats.shelve_dir)
    assert shelve["hook"] is None  # no systemd unit: commented, with stop/start placeholders (refused without)
    assert all(line.startswith("#") for line in shelve["snippet"].splitlines())
    assert "celery_shelve" in shelve["snippet"] and str(beats.shelve_dir) in shelve["snippet"]
    assert f"#   python: {sys.executable}" in shelve["snippet"] and "#   stop_command:" in shelve["snippet"]

    table = discover(*beats.pids)
    assert table.returncode == 0, table.stderr
    assert "3 celery beats on this host" in table.stdout and "repairable: hook below" in table.stdout
    assert f"shares hook {hook['name']}" in table.stdout
    pasted = yaml.safe_load(table.stdout[table.stdout.index("\nhooks:\n"):])
    assert pasted["hooks"] == [hook]


def test_as_an_unprivileged_user_root_beats_are_listed_as_not_inspectable_with_the_reason(beats: Beats) -> None:
    need(os.geteuid() == 0, "root (to run discover as nobody)")
    proc = discover("--json", *beats.pids, prefix=AS_NOBODY)
    assert proc.returncode == 0, proc.stderr
    found = _by_pid(proc.stdout)
    assert len(found) == 3
    for pid, beat in found.items():
        assert beat["inspectable"] is False and beat["hook"] is None and beat["cwd"] is None
        assert beat["user"] == "root"
        assert any(f"permission denied reading /proc/{pid}/environ and /proc/{pid}/cwd" in p
                   and "(the process belongs to root: run timeguard discover as root)" in p
                   for p in beat["problems"]), beat["problems"]
    # The command line is public: what it says is still reported; what only the environment and the project's
    # files say is unknown, not guessed.
    assert beats.explicit.process and beats.from_settings.process
    explicit = found[beats.explicit.process.pid]
    assert (explicit["scheduler"], explicit["max_interval_s"]) == ("django_celery_beat.DatabaseScheduler", 1.0)
    unknown = found[beats.from_settings.process.pid]
    assert (unknown["scheduler"], unknown["scheduler_name"], unknown["max_interval_s"]) == ("unknown", "?", None)
    table = discover(*beats.pids, prefix=AS_NOBODY)
    assert table.stdout.count("not inspectable") >= 3 and "permission denied" in table.stdout


def test_write_yes_adds_the_hooks_to_a_configuration_that_still_validates(beats: Beats) -> None:
    directory = scratch_dir("discover-write")
    config = directory / "timeguard.yaml"
    original = f"# my configuration\nstate_dir: {directory / 'state'}\nhooks: []  # none yet\n"
    config.write_text(original)
    proc = discover("--write", "--yes", "--config", str(config), *beats.pids)
    assert proc.returncode == 0, proc.stderr
    assert (directory / "timeguard.yaml.bak").read_text() == original
    written = yaml.safe_load(config.read_text())
    assert [h["type"] for h in written["hooks"]] == ["celery_beat"]  # both beats share one database
    assert config.read_text().startswith("# my configuration\n")
    env_file = Path(written["hooks"][0]["django"]["environment_file"])
    assert env_file.parent == directory and oct(env_file.stat().st_mode & 0o777) == oct(0o600)
    assert f"TG_BEAT_DATABASE_URL='{beats.db.url}'" in env_file.read_text().splitlines()
    valid = subprocess.run([sys.executable, "-m", "timeguard", "config", "validate", str(config)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert valid.returncode == 0, valid.stderr
    # the hook as written reads the project's settings (its interpreter, the environment file) and reaches the
    # beat's database
    dry = subprocess.run([sys.executable, "-m", "timeguard", "repair", "celery-beat", "--hook",
                          written["hooks"][0]["name"], "--dry-run", "--config", str(config)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert dry.returncode == 0 and "nothing to repair" in dry.stdout, dry.stdout + dry.stderr
    again = discover("--write", "--yes", "--config", str(config), *beats.pids)
    assert again.returncode == 0 and "nothing to write" in again.stdout  # both beats are covered now


def test_a_worker_with_an_embedded_beat_is_one_beat_not_one_per_process(beats: Beats) -> None:
    assert len(beats.worker_children) >= 3  # the embedded beat's process and the two pool processes
    proc = discover("--json", *beats.worker_pids)
    assert proc.returncode == 0, proc.stderr
    found = _by_pid(proc.stdout)
    assert list(found) == [beats.worker.pid]
    worker = found[beats.worker.pid]
    assert worker["form"] == "celery worker -B" and worker["scheduler"] == "celery.PersistentScheduler"
    assert worker["schedule_file"] == str(beats.shelve_dir / "worker-schedule")


def test_beats_a_configured_hook_repairs_are_marked_and_not_proposed_again(beats: Beats) -> None:
    directory = scratch_dir("discover-covered")
    config = directory / "timeguard.yaml"
    text = yaml.safe_dump({"state_dir": str(directory / "state"), "hooks": [
        {"type": "celery_beat", "name": "mine", "database_url": beats.db.url}]}, sort_keys=False)
    config.write_text(text)
    proc = discover("--json", "--config", str(config), *beats.pids)
    assert proc.returncode == 0, proc.stderr
    found = _by_pid(proc.stdout)
    assert beats.explicit.process and beats.from_settings.process
    # both DatabaseScheduler beats use the database the hook repairs; the shelve beat does not
    assert [found[p.pid]["covered_by"] for p in (beats.explicit.process, beats.from_settings.process)] == ["mine"] * 2
    assert found[beats.shelve.pid]["covered_by"] is None
    table = discover("--config", str(config), *beats.pids)
    assert table.stdout.count("covered by hook mine") == 2
    write = discover("--write", "--yes", "--config", str(config), *beats.pids)
    assert write.returncode == 0 and "nothing to write" in write.stdout, write.stderr
    assert config.read_text() == text


def test_no_beat_found_exits_1_and_an_unreadable_configuration_2(beats: Beats) -> None:
    none = discover("--pid", str(os.getpid()))  # this test process: not a beat
    assert none.returncode == 1 and "no celery beat is running" in none.stdout
    broken = scratch_dir("discover-broken") / "timeguard.yaml"
    broken.write_text("hooks: [\n")
    bad = discover("--config", str(broken), *beats.pids)
    assert bad.returncode == 2 and "not valid YAML" in bad.stderr


CHROOT_SCRIPT = r"""
set -e
mount -t tmpfs tg-discover-root "$ROOT"
for entry in /*; do
    name=${entry#/}
    if [ -L "$entry" ]; then ln -s "$(readlink "$entry")" "$ROOT/$name"
    elif [ -d "$entry" ]; then mkdir "$ROOT/$name"; mount --rbind "$entry" "$ROOT/$name"
    fi
done
cd "$APP_DIR"
exec chroot "$ROOT" sh -c 'cd "$APP_DIR" && exec "$@"' sh "$@"
"""


def test_a_beat_under_another_root_directory_gets_no_hook_with_this_hosts_paths(beats: Beats) -> None:
    """A container's or a chroot's beat: its interpreter and directory name files of its own root, not this
    host's. Here a real chroot (a tmpfs root holding bind mounts of this host's directories, in a private mount
    namespace: nothing is mounted on the host)."""
    need(os.geteuid() == 0, "root (unshare --mount, chroot)")
    need(subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "true"],
                        capture_output=True, check=False).returncode == 0, "unshare --mount is not permitted here")
    root = scratch_dir("discover-chroot")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "TG_BEAT", "PYTHONPATH"))}
    env.update(ROOT=str(root), APP_DIR=str(beats.shelve_dir))
    proc = ManagedProcess.start(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", CHROOT_SCRIPT, "sh",
         sys.executable, "-m", "celery", "-A", "shelveapp", "beat", "-l", "info", "--pidfile=",
         "-s", str(beats.shelve_dir / "chroot-schedule")],
        name="celery-beat:chroot", log_path=beats.shelve_dir / "chroot.log", env=env)
    try:
        _wait_for(lambda: "beat: Starting" in (beats.shelve_dir / "chroot.log").read_text(), proc, 30)
        out = discover("--json", "--pid", str(proc.pid))
        assert out.returncode == 0, out.stderr
        [beat] = json.loads(out.stdout)["beats"]
        assert beat["other_root"] is True and beat["inspectable"] is True
        assert beat["scheduler"] == "celery.PersistentScheduler"  # what it runs is still said
        assert "another root directory" in beat["snippet"] and "celery_shelve" not in beat["snippet"]
        assert proc.alive(), proc.log_tail()
        # the module's own beats share this host's root
        assert all(b["other_root"] is False for b in json.loads(discover("--json", *beats.pids).stdout)["beats"])
    finally:
        proc.stop()


def test_the_hook_discover_writes_repairs_the_beat_it_found(ftshim: Path) -> None:
    """Issue 11's promise end to end: a beat in the bug (180 days of future stamps, silent after the rollback),
    `timeguard discover --write` on it, and the hook it wrote — unchanged — repairs it: beat sends again."""
    clock = FakeClock(scratch_dir("discover-repair-clock"), ftshim=ftshim)
    clock.set(beatlib.FUTURE_S)
    with beatlib.seeded_database("sqlite") as db, beatlib.running_beat(db, clock, max_interval=1) as beat:
        beatlib.drive_into_bug(db, clock, beat)
        assert db.state().future(), "the bug: future last_run_at in the database"
        directory = scratch_dir("discover-repair")
        config = directory / "timeguard.yaml"
        config.write_text(f"state_dir: {directory / 'state'}\n")
        assert beat.process is not None
        written = discover("--write", "--yes", "--config", str(config), "--pid", str(beat.process.pid))
        assert written.returncode == 0, written.stdout + written.stderr
        (hook,) = yaml.safe_load(config.read_text())["hooks"]
        assert hook["type"] == "celery_beat" and "django" in hook
        started = time.monotonic()
        repair = subprocess.run([sys.executable, "-m", "timeguard", "repair", "celery-beat", "--hook", hook["name"],
                                 "--trust-local-clock", "--config", str(config)],
                                capture_output=True, text=True, timeout=120, check=False, cwd="/")
        assert repair.returncode == 0, repair.stdout + repair.stderr
        sent = beat.wait_custom_sent(since=started, timeout_s=20)
        print(f"first custom task sent {sent.mono - started:.1f} s after the repair started")
        assert db.state().future() == []

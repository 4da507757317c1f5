"""A real kernel whose clock really steps: Debian's kernel under QEMU (TCG), running a Python script as root in a
throw-away guest (harness.md R5)."""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support.realprogs.processes import SETPRIV_NO_SYS_TIME, register
from tests.support.realprogs.scratch import build_c, scratch_dir

#
# Why QEMU in TCG mode and not User-Mode-Linux: UML runs each guest process as a host process under ptrace and
# moves its FPU/extended state in and out of the host CPU through ptrace calls whose buffer depends on the host
# CPU's XSAVE features and the host kernel; on an AVX-512 Xeon with kernel 6.18, Debian 12's UML dies at boot
# ("userspace - ptrace set fp regs failed, errno = 14", EFAULT). TCG translates every guest instruction in software
# and keeps the guest CPU's registers and XSAVE area in QEMU's own memory, for the fixed model QEMU_CPU: the host's
# extended state is never the guest's, and /dev/kvm is not used. Same kernel, same CPU, same boot on every x86-64
# host.

#: A fixed CPU model, identical on every host: qemu64 is the x86-64 baseline (SSE2/SSE3, no AVX, so no XSAVE
#: feature of the host matters); RDRAND (emulated by TCG from QEMU's own random source) seeds the guest's CRNG at
#: boot — without it Python's start-up blocks ~1 s in getrandom() waiting for entropy.
QEMU_CPU = "qemu64,+rdrand"
#: Debian's generic kernel (the cloud flavour has no 9p): fetched, never installed (see guest_kernel()).
GUEST_KERNEL_PACKAGE = "linux-image-amd64"
#: What the guest init loads to mount the host's / over virtio-9p, in dependency order (each after every module
#: its modinfo ``depends=`` names).
GUEST_MODULES: tuple[str, ...] = (
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci",
    "net/9p/9pnet",
    "net/9p/9pnet_virtio",
    "fs/netfs/netfs",
    "fs/fscache/fscache",
    "fs/9p/9p",
)
#: The kernel command-line parameter that carries a run's random token: the only marker of the guest. The host's
#: command line was fixed at its boot and can't contain a token made afterwards.
GUEST_MARK = "timeguard.guest"
GUEST_ENV: tuple[str, ...] = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "TMPDIR=/run/tmp",  # the host's / is read-only in the guest; /run is the guest's tmpfs
    "LANG=C.UTF-8",
    "PYTHONDONTWRITEBYTECODE=1",
)

GUEST_INIT_SOURCE = r"""/* PID 1 of the timeguard test guest (QEMU, TCG).
 * Loads the 9p modules, mounts the host's / read-only on /host, runs the command in /argv (environment /env)
 * chrooted there, prints TIMEGUARD_GUEST_EXIT=<status>, powers off. It refuses to do anything unless it is PID 1
 * of a kernel whose command line carries this run's token (/token): never on the host, never in a container.
 * A refusal exits without reboot(); as the guest's PID 1 that panics the kernel, and panic=-1 with QEMU's
 * -no-reboot ends QEMU. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void say(const char *what) { fprintf(stderr, "guest-init: %s: %s\n", what, strerror(errno)); }

static void power_off(int status) {
    printf("TIMEGUARD_GUEST_EXIT=%d\n", status);
    fflush(stdout);
    sync();
    reboot(RB_POWER_OFF);
    _exit(status);
}

static size_t slurp(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    size_t n = 0;
    ssize_t r;
    if (fd < 0) return 0;
    while (n < size - 1 && (r = read(fd, buf + n, size - 1 - n)) > 0) n += (size_t)r;
    close(fd);
    buf[n] = 0;
    return n;
}

static int loopback_up(void) { /* the guest's own lo: guest scripts may serve on 127.0.0.1 */
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), ok;
    memset(&ifr, 0, sizeof ifr);
    strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
    ok = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 && (ifr.ifr_flags |= IFF_UP, ioctl(s, SIOCSIFFLAGS, &ifr) == 0);
    if (s >= 0) close(s);
    return ok;
}

static char **split0(char *buf, size_t n) { /* "a\0b\0" -> {"a", "b", NULL} */
    size_t count = 0, k = 0;
    for (size_t i = 0; i < n; i++) count += buf[i] == 0;
    char **out = calloc(count + 1, sizeof *out);
    for (size_t i = 0; out && i < n && k < count; k++) { out[k] = buf + i; i += strlen(buf + i) + 1; }
    return out;
}

int main(void) {
    static char token[128], mark[256], cmdline[4096], modules[4096], argv_buf[65536], env_buf[65536];
    if (getpid() != 1) {
        fprintf(stderr, "REFUSING: guest-init runs only as PID 1 of the timeguard QEMU test guest\n");
        return 2;
    }
    if (mount("proc", "/proc", "proc", 0, NULL) != 0) { say("mount /proc"); return 2; }
    slurp("/token", token, sizeof token);
    snprintf(mark, sizeof mark, " %s ", token);
    cmdline[0] = ' ';
    slurp("/proc/cmdline", cmdline + 1, sizeof cmdline - 2);
    cmdline[strcspn(cmdline, "\n")] = 0;
    strcat(cmdline, " ");
    if (token[0] == 0 || strstr(cmdline, mark) == NULL) {
        fprintf(stderr, "REFUSING: this kernel was not booted as this run's timeguard QEMU test guest\n");
        return 2;
    }
    slurp("/modules.list", modules, sizeof modules);
    for (char *name = strtok(modules, "\n"); name; name = strtok(NULL, "\n")) {
        char path[512];
        snprintf(path, sizeof path, "/modules/%s.ko", name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || (syscall(SYS_finit_module, fd, "", 0) != 0 && errno != EEXIST)) { say(path); power_off(125); }
        close(fd);
    }
    if (mount("host", "/host", "9p", MS_RDONLY, "trans=virtio,version=9p2000.L,cache=loose,msize=512000") != 0) {
        say("mount the host's / (9p) on /host");
        power_off(125);
    }
    if (mount("proc", "/host/proc", "proc", 0, NULL) != 0 || mount("sys", "/host/sys", "sysfs", 0, NULL) != 0
        || mount("dev", "/host/dev", "devtmpfs", 0, NULL) != 0
        || mount("run", "/host/run", "tmpfs", 0, "mode=0755") != 0 || mkdir("/host/run/tmp", 01777) != 0) {
        say("mount the guest's own /proc, /sys, /dev and /run");
        power_off(125);
    }
    if (!loopback_up()) { say("bring lo up"); power_off(125); }
    char **argv = split0(argv_buf, slurp("/argv", argv_buf, sizeof argv_buf));
    char **envp = split0(env_buf, slurp("/env", env_buf, sizeof env_buf));
    if (argv == NULL || argv[0] == NULL || envp == NULL) { fprintf(stderr, "guest-init: no /argv\n"); power_off(125); }
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) { say("fork"); power_off(125); }
    if (child == 0) {
        if (chroot("/host") != 0 || chdir("/") != 0) { say("chroot /host"); _exit(125); }
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0) dup2(null, 0);
        dup2(1, 2);
        execve(argv[0], argv, envp);
        say(argv[0]);
        _exit(127);
    }
    int status = 0;
    pid_t reaped;
    while ((reaped = wait(&status)) != child) /* PID 1 also reaps orphans */
        if (reaped < 0 && errno != EINTR) { say("wait"); power_off(125); }
    power_off(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}
"""

# The console lines the guest kernel itself prints at power-off; kept narrow so that nothing a guest script prints
# is ever dropped.
_GUEST_NOISE = re.compile(r"^\[\s*\d+\.\d+\] reboot: Power down$")
_GUEST_EXIT = re.compile(r"^TIMEGUARD_GUEST_EXIT=(\d+)$")


def host_realtime_minus_monotonic_s() -> float:
    """This machine's CLOCK_REALTIME − CLOCK_MONOTONIC, from the tightest of 50 bracketed readings: it changes if
    and only if the host clock is set, so tests and benchmarks compare it before and after a guest run."""
    best: tuple[int, int] | None = None
    for _ in range(50):
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m2 - m1 < best[0]:
            best = (m2 - m1, r - (m1 + m2) // 2)
    assert best is not None
    return best[1] / 1e9


def qemu_guest_script(script_text: str, token: str) -> str:
    """``script_text`` behind the guest guard (``from __future__`` lines stay first, as Python requires).

    The guard refuses at once unless ``/proc/cmdline`` carries ``timeguard.guest=<token>`` — true only in the
    guest booted for this run — and defines ``guest_only(call, *args, **kwargs)``, which checks again and then
    makes that call: every line of a guest script that sets a clock goes through it, so the guard shows there.
    """
    if not re.fullmatch(r"[0-9a-f]{16,64}", token):
        raise ValueError(f"guest token must be 16-64 lowercase hex digits, not {token!r}")
    guard = (
        "import sys as _tg_sys\n"
        "def guest_only(call, *args, **kwargs):\n"
        "    with open('/proc/cmdline') as _tg_f:\n"
        f"        if {f'{GUEST_MARK}={token}'!r} not in _tg_f.read().split():\n"
        "            _tg_sys.exit('REFUSING: not inside the timeguard QEMU test guest (this script sets the clock)')\n"
        "    return call(*args, **kwargs)\n"
        "guest_only(int)  # refuse at once outside the guest\n"
    )
    lines = script_text.splitlines(keepends=True)
    future = [ln for ln in lines if ln.startswith("from __future__ import")]
    body = [ln for ln in lines if not ln.startswith("from __future__ import")]
    return "".join(future) + guard + "".join(body)


def guest_python() -> str:
    """The interpreter the guest runs by default: this one (venv included), through the 9p share of the host's /.

    QEMU's 9p server reads host files as the user running QEMU, i.e. as us, so whatever this process can execute
    the guest can too.
    """
    real = os.path.realpath(sys.executable)
    if not os.access(real, os.R_OK | os.X_OK):
        raise PermissionError(f"{real} is not readable+executable by uid {os.geteuid()}; the guest can't run it")
    return sys.executable


def guest_kernel_cache() -> Path:
    """Where the guest's kernel and init are kept: $TIMEGUARD_GUEST_KERNEL_CACHE, else ~/.cache/timeguard/guest."""
    if explicit := os.environ.get("TIMEGUARD_GUEST_KERNEL_CACHE"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "timeguard" / "guest"


def _current_kernel_package() -> str | None:
    """The ``linux-image-<abi>-amd64`` that ``linux-image-amd64`` depends on in apt's lists (None without apt)."""
    apt_cache = shutil.which("apt-cache")
    if apt_cache is None:
        return None
    proc = subprocess.run(
        [apt_cache, "depends", "--important", GUEST_KERNEL_PACKAGE], capture_output=True, text=True, check=False
    )
    found = re.search(r"Depends:\s*(linux-image-\S+)", proc.stdout)
    return found.group(1) if found else None


def _unpacked_kernel(bzimage: bytes, config: str) -> bytes:
    """The ELF vmlinux inside an xz bzImage when the kernel has PVH (QEMU then starts it directly, ~4 s faster
    under TCG than decompressing in the guest); otherwise the bzImage itself."""
    start = bzimage.find(b"\xfd7zXZ\x00")
    if "CONFIG_PVH=y" not in config.splitlines() or start < 0:
        return bzimage
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
    except lzma.LZMAError:
        return bzimage
    return elf if elf.startswith(b"\x7fELF") else bzimage


def _fetch_kernel(package: str, dest: Path) -> None:
    """``apt-get download`` + ``dpkg-deb --fsys-tarfile`` of ``package`` into ``dest``: ``kernel`` and
    ``modules/<name>.ko`` for each of GUEST_MODULES the kernel does not have built in. Nothing is installed: no
    /boot, no bootloader, no package script."""
    apt_get, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if apt_get is None or dpkg_deb is None:
        raise FileNotFoundError("apt-get and dpkg-deb are needed to fetch Debian's kernel for the QEMU guest")
    download = subprocess.run([apt_get, "download", package], cwd=dest, capture_output=True, text=True, check=False)
    debs = list(dest.glob(f"{package}_*.deb"))
    if download.returncode != 0 or len(debs) != 1:
        raise RuntimeError(f"apt-get download {package} failed (apt-get update first?): {download.stderr.strip()}")
    wanted = {module: Path(module).name for module in GUEST_MODULES}
    (dest / "modules").mkdir()
    bzimage, config, builtin = b"", "", ""
    module_path = re.compile(r"(?:usr/)?lib/modules/[^/]+/kernel/(.+)\.ko(\.xz)?")
    builtin_path = re.compile(r"(?:usr/)?lib/modules/[^/]+/modules\.builtin")
    with subprocess.Popen([dpkg_deb, "--fsys-tarfile", str(debs[0])], stdout=subprocess.PIPE) as unpack:
        assert unpack.stdout is not None
        with tarfile.open(fileobj=unpack.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                module = module_path.fullmatch(name)
                keep = name.startswith("boot/") or (module and module[1] in wanted) or builtin_path.fullmatch(name)
                if not member.isfile() or not keep:
                    continue
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                if name.startswith("boot/vmlinuz-"):
                    bzimage = data
                elif name.startswith("boot/config-"):
                    config = data.decode(errors="replace")
                elif builtin_path.fullmatch(name):
                    builtin = data.decode(errors="replace")
                elif module:
                    ko = lzma.decompress(data) if module[2] else data
                    (dest / "modules" / f"{wanted.pop(module[1])}.ko").write_bytes(ko)
    debs[0].unlink()
    for line in builtin.splitlines():  # "kernel/fs/9p/9p.ko": compiled in, nothing to load
        wanted.pop(line.removeprefix("kernel/").removesuffix(".ko"), None)
    if unpack.returncode != 0 or not bzimage or wanted:
        raise RuntimeError(f"{package}: no vmlinuz, or missing modules {sorted(wanted)} (dpkg-deb {unpack.returncode})")
    (dest / "kernel").write_bytes(_unpacked_kernel(bzimage, config))


def guest_kernel() -> Path:
    """The directory with the guest's ``kernel`` and ``modules/``: Debian's current ``linux-image-amd64``.

    Fetched once per kernel ABI into guest_kernel_cache() (70 MB download, ~10 s; .ci/setup does it, a test that
    finds none does it too) and kept there (~75 MB); an older ABI's directory is removed when a newer one arrives.
    Looked up once per test session (asking apt costs ~0.8 s).
    """
    global _guest_kernel
    if _guest_kernel is None or not (_guest_kernel / "kernel").is_file():
        _guest_kernel = _find_or_fetch_guest_kernel()
    return _guest_kernel


_guest_kernel: Path | None = None


def _find_or_fetch_guest_kernel() -> Path:
    cache = guest_kernel_cache()
    package = _current_kernel_package()
    if package is None:  # no apt (or no lists): whatever was fetched before
        cached = sorted(p.parent for p in cache.glob("linux-image-*/kernel"))
        if cached:
            return cached[-1]
        raise FileNotFoundError(f"no kernel for the QEMU guest in {cache} and apt can't resolve {GUEST_KERNEL_PACKAGE}")
    target = cache / package
    if (target / "kernel").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=cache))
    tmp.chmod(0o755)
    try:
        _fetch_kernel(package, tmp)
        try:
            tmp.rename(target)
        except OSError:  # a concurrent fetch got there first
            if not (target / "kernel").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in cache.glob("linux-image-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def guest_init() -> Path:
    """GUEST_INIT_SOURCE compiled static (gcc, libc6-dev), cached by the hash of its source."""
    digest = hashlib.sha256(GUEST_INIT_SOURCE.encode()).hexdigest()[:16]
    return build_c(GUEST_INIT_SOURCE, guest_kernel_cache(), f"init-{digest}", ["-static", "-Os"])


def _cpio_newc(entries: Sequence[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """An uncompressed ``newc`` cpio archive (what the kernel unpacks as initramfs) of (name, mode, data, rdev)."""
    out = bytearray()
    for ino, (name, mode, data, (major, minor)) in enumerate([*entries, ("TRAILER!!!", 0, b"", (0, 0))], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, major, minor, len(encoded), 0)
        out += b"070701" + "".join(f"{v:08X}" for v in fields).encode() + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _guest_initramfs(kernel_dir: Path, init: Path, token: str, argv: Sequence[str], env: Sequence[str]) -> bytes:
    def nul_list(items: Sequence[str]) -> bytes:
        return b"".join(item.encode() + b"\0" for item in items)

    names = [n for m in GUEST_MODULES if (kernel_dir / "modules" / f"{(n := Path(m).name)}.ko").is_file()]
    entries = [(d, stat.S_IFDIR | 0o755, b"", (0, 0)) for d in ("dev", "proc", "host", "modules")]
    entries += [
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
        ("init", stat.S_IFREG | 0o755, init.read_bytes(), (0, 0)),
        ("token", stat.S_IFREG | 0o644, f"{GUEST_MARK}={token}".encode(), (0, 0)),
        ("modules.list", stat.S_IFREG | 0o644, "".join(f"{n}\n" for n in names).encode(), (0, 0)),
        ("argv", stat.S_IFREG | 0o644, nul_list(argv), (0, 0)),
        ("env", stat.S_IFREG | 0o644, nul_list(env), (0, 0)),
    ]
    entries += [
        (f"modules/{n}.ko", stat.S_IFREG | 0o644, (kernel_dir / "modules" / f"{n}.ko").read_bytes(), (0, 0))
        for n in names
    ]
    return _cpio_newc(entries)


def qemu_run(
    script_text: str, timeout_s: float = 120, *, mem_mb: int = 256, python: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run Python ``script_text`` as root in a throw-away QEMU (TCG) guest; returns its console and exit code.

    The guest is Debian's kernel with a tiny initramfs (guest_init()): it sees the host's ``/`` read-only over 9p,
    with its own ``/proc``, ``/sys``, ``/dev``, and ``/run`` (tmpfs; ``$TMPDIR=/run/tmp``). Its kernel clock is its
    own: ``clock_settime`` in there steps only the guest, TFD_TIMER_CANCEL_ON_SET really fires. Its ``lo`` is up
    (its own loopback; there is no other network device). QEMU runs without CAP_SYS_TIME. ``returncode`` is the
    script's exit status (125 if the guest died before reporting one), ``stdout`` the guest console, ``stderr``
    QEMU's. Raises ``subprocess.TimeoutExpired`` after killing QEMU when it runs longer than ``timeout_s``.
    """
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise FileNotFoundError("qemu-system-x86_64 not found (apt-get install qemu-system-x86)")
    kernel, init = guest_kernel(), guest_init()
    token = secrets.token_hex(16)
    work = scratch_dir("qemu")
    try:
        script = work / "guest.py"
        script.write_text(qemu_guest_script(script_text, token))
        initrd = work / "initrd.cpio"
        initrd.write_bytes(_guest_initramfs(kernel, init, token, [python or guest_python(), str(script)], GUEST_ENV))
        argv = [
            *SETPRIV_NO_SYS_TIME,
            qemu,
            "-accel", "tcg",  # software CPU: no /dev/kvm, no host CPU state in the guest
            "-cpu", QEMU_CPU,
            "-smp", "1",
            "-m", str(mem_mb),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-serial", "stdio",
            "-kernel", str(kernel / "kernel"),
            "-initrd", str(initrd),
            "-append", f"console=ttyS0 quiet panic=-1 mitigations=off {GUEST_MARK}={token}",
            "-fsdev", "local,id=host,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=host,mount_tag=host",
        ]  # fmt: skip
        popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        register(popen.pid, "qemu-system-x86_64")
        try:
            raw_out, raw_err = popen.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)  # our own session: QEMU, by the id we started
            popen.communicate()
            raise
        text = raw_out.decode(errors="replace").replace("\r\n", "\n").replace("\r", "")
        output = [ln for ln in text.splitlines() if not _GUEST_NOISE.match(ln)]
        codes = [int(m[1]) for ln in output if (m := _GUEST_EXIT.match(ln))]
        stdout = "\n".join(ln for ln in output if not _GUEST_EXIT.match(ln)) + "\n"
        return subprocess.CompletedProcess(argv, codes[-1] if codes else 125, stdout, raw_err.decode(errors="replace"))
    finally:
        shutil.rmtree(work, ignore_errors=True)


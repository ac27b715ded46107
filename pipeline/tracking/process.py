"""Which process logs a run, told beyond doubt, and how long this one has lived.

A run records three things about the process that logs it: its id, its own start time, and
the identity of the machine it runs on. A RUNNING run is provably orphaned only when all
three say so: the machine is this one, and no process with that id and that start time
exists. Anything less (another machine, a process we may not inspect, a start time we cannot
read) counts as alive, because closing a live run is worse than leaving a dead one open.

- The machine: on Linux the kernel's boot id (new at every boot) with the host name and the
  process-id namespace (containers on one kernel each have their own pids); elsewhere the
  boot time with the host name. No option sets it, unlike `--host`.
- The start time: on Linux the process's start in clock ticks after boot (/proc/PID/stat,
  field 22), which never changes while it lives; elsewhere psutil's creation time, which
  comes from the kernel's own record of the process.

A process that `mlflow run` starts long after it created the run (the conda manager builds
the environment first) still matches: its start time is compared with itself, not with the
run's.
"""

import os
import platform
import socket
import subprocess
import time
from pathlib import Path

import psutil

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def host_name() -> str:
    """This machine's name, as it stays: on macOS the local host name (`scutil --get
    LocalHostName`), since the host name there follows the network a Mac is on; elsewhere
    the host name."""
    if platform.system() == "Darwin":
        try:
            out = subprocess.run(
                ["scutil", "--get", "LocalHostName"], capture_output=True, text=True, timeout=5
            )
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None and out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return socket.gethostname()


def machine_id() -> str:
    """This machine, as no option can set it: host name, boot id and pid namespace (Linux),
    or host name and boot time."""
    try:
        boot = BOOT_ID.read_text().strip()
    except OSError:
        return f"{host_name()} boot {int(psutil.boot_time())}"
    try:
        return f"{host_name()} {boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return f"{host_name()} {boot}"


def started(pid: int) -> str | None:
    """The process's start time as a token that never changes while it lives; None when
    there is no such process or it may not be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return "ticks " + stat.rsplit(")", 1)[1].split()[19]  # field 22, after the name
    except (OSError, IndexError):
        pass
    if Path("/proc/self/stat").exists():
        return None  # Linux, and that process is gone or hidden from us
    try:
        return f"{psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return None


def identity() -> dict[str, str]:
    """What identifies this process: (pid, start token, machine id) as plain strings."""
    pid = os.getpid()
    return {"pid": str(pid), "started": started(pid) or "", "machine": machine_id()}


def alive(pid: int, start_token: str) -> bool:
    """Whether the process with this id and start token may still run. Only a process that
    provably does not exist, or exited (a zombie), or is another process with the same id,
    counts as gone; one we may not inspect counts as alive."""
    if not psutil.pid_exists(pid):
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # AccessDenied: another user's process
        return True
    now = started(pid)
    return now is None or not start_token or now == start_token


def seconds_since_start() -> float:
    """Wall time since the operating system started this process, imports included. On Linux
    from the kernel's own clocks (to 10 ms; psutil's start time rests on a boot time rounded
    to the second); elsewhere from psutil."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime
    except OSError:
        return time.time() - psutil.Process().create_time()

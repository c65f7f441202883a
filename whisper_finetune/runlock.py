"""One run per folder: a lock file in ``--output_dir`` that names the run holding it.

Two training runs writing one folder would interleave checkpoints, rotate each other's away and leave a
final model that is neither. The run's main process creates ``.run.lock`` with ``O_CREAT | O_EXCL`` (atomic:
of two runs starting together exactly one succeeds) and writes its host, PID and start time into it as
JSON; the file is removed when the run ends, however it ends short of ``kill -9``. A second run finding
the file is refused at once, with the holder named. A lock left by a killed run is recognised when its
holder ran on this host and that process is gone (or the PID now belongs to a process started later, a
reused PID); it is then taken over with a warning. A lock from another host cannot be checked: the error
says to delete it when that run is known to be over.
"""
import contextlib
import datetime
import json
import logging
import os
import socket
import sys
import time

from .errors import RunLocked

logger = logging.getLogger(__name__)

LOCK_FILE = ".run.lock"
# An empty lock younger than this belongs to a run writing it right now (created, not yet filled).
FRESH_SECONDS = 10


def _start_ticks(pid):
    """When process ``pid`` started, in clock ticks since boot (Linux ``/proc``; ``None`` elsewhere or if gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: the fields after it follow the last ")".
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _alive(pid, start_ticks):
    """Whether the process that wrote a lock (``pid``, started at ``start_ticks``) still runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    now = _start_ticks(pid)
    return start_ticks is None or now is None or now == start_ticks


def _holder(path):
    """The lock's content (``{}`` when unreadable: a run killed between creating and writing it)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def describe(holder):
    """``host H, PID P, started T`` of a lock's content."""
    return (f"host {holder.get('host', '?')}, PID {holder.get('pid', '?')}, started {holder.get('started', '?')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


def _create(path):
    """Create the lock atomically with this process's details; ``False`` when it exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    content = {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
               "started": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]) if sys.argv else ""}
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(content, f)
    return True


def acquire(folder):
    """Take ``folder``'s lock (creating the folder); returns the lock's path. Raises :class:`RunLocked`
    naming the holder when a live run holds it; takes over, with a warning, a lock whose holder is gone."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, LOCK_FILE)
    for _ in range(3):  # a stale lock removed by two newcomers at once: one of them creates it, the other retries
        if _create(path):
            return path
        holder = _holder(path)
        with contextlib.suppress(FileNotFoundError):
            if not holder and time.time() - os.path.getmtime(path) < FRESH_SECONDS:
                raise RunLocked(f"--output_dir {folder} is being taken by a run starting now (lock file {path}); "
                                f"choose another --output_dir")
        same_host = holder.get("host") == socket.gethostname()
        pid = holder.get("pid")
        if holder and not (same_host and isinstance(pid, int) and not _alive(pid, holder.get("start_ticks"))):
            where = "" if same_host else "; it cannot be checked from this host: delete the file if that run is over"
            raise RunLocked(f"--output_dir {folder} is in use by another run ({describe(holder)}; lock file "
                            f"{path}){where}; wait for it to end or choose another --output_dir")
        logger.warning("taking over the lock of %s from a run that is gone (%s)", folder,
                       describe(holder) if holder else "an empty lock file")
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    raise RunLocked(f"--output_dir {folder}: could not take its lock file {path}; another run keeps creating it")


def release(path):
    """Remove the lock at ``path`` if this process holds it."""
    if path and _holder(path).get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


@contextlib.contextmanager
def held(folder, main_process=True):
    """``with held(output_dir):`` the block runs holding the folder's lock (only the main process takes it). A
    folder the lock created and the block left empty (a run stopped by a bad option) is removed again."""
    created = main_process and not os.path.isdir(folder)
    path = acquire(folder) if main_process else None
    try:
        yield path
    finally:
        release(path)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if empty

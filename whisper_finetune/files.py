"""Atomic writes: files and folders appear complete or not at all.

A run can be killed at any moment (OOM killer, power cut, a pre-empted cloud GPU). Every file or folder
we write for later use is built under a temporary name beside its destination and renamed into place
when complete; a rename within one file system is atomic, so a reader sees the old state or the new one.
What a kill leaves behind of a folder is a ``*.partial`` folder, which no reader takes for the real one
and the next write removes.

A full disk (ENOSPC, or a quota: EDQUOT) while writing becomes :class:`~whisper_finetune.errors.DiskFull`:
the temporary file or folder is removed first, so the error leaves exactly what was there before, and its
one line names the folder, how much was needed and how much is free.
"""
import contextlib
import errno
import glob
import os
import shutil
import tempfile

from .errors import DiskFull

PARTIAL_SUFFIX = ".partial"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How libraries say it without the errno: safetensors (Rust io::ErrorKind::StorageFull), datasets (its own check
# before writing: "Not enough disk space") and pyarrow (the OS message in its own exception).
DISK_FULL_WORDS = ("No space left on device", "StorageFull", "Disk quota exceeded", "Not enough disk space")
# torch.save's writer reports any failed write as "file write failed", without the errno: taken for a full disk
# when the device then has less than this free.
NEARLY_FULL_BYTES = 64 * 2**20


def is_disk_full(exc, folder=None):
    """Whether ``exc`` (or an exception it was raised from) is a full disk or an exceeded quota."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DiskFull):
            return False  # already reported: not to be wrapped twice
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        message = str(exc)
        if any(word in message for word in DISK_FULL_WORDS):
            return True
        if "write failed" in message and folder is not None and free_bytes(folder) < NEARLY_FULL_BYTES:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(folder):
    """Free bytes on the device of ``folder`` (or of its nearest existing parent)."""
    folder = os.path.abspath(folder)
    while not os.path.exists(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder).free


def tree_bytes(path):
    """Bytes held by a file or a folder (0 when it does not exist)."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, name))
    return total


def human_bytes(count):
    """``1.2 GB``, ``340 MB``, ``12 kB``: decimal units, as df -H and file managers show them."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def disk_full(folder, what, needed=None, written=None, advice="free some space and rerun the same command"):
    """The :class:`DiskFull` of a write into ``folder``: ``needed`` (bytes, an estimate) or, when unknown, more
    than ``written`` (what got onto the disk before it filled)."""
    if needed:
        need = f"it needs about {human_bytes(needed)}"
    elif written:
        need = f"it needed more than the {human_bytes(written)} written"
    else:
        need = "its size is not known"
    return DiskFull(f"no space left on the device of {os.path.abspath(folder)} while writing {what}: {need}, "
                    f"{human_bytes(free_bytes(folder))} free; the half-written part was removed; {advice}")


@contextlib.contextmanager
def space_guard(folder, what, partial=None, needed=None, advice="free some space and rerun the same command"):
    """Turn a full disk inside the block into :class:`DiskFull`, after removing ``partial`` (a file or folder
    the block was writing). Any other exception passes unchanged."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc, folder):
            raise
        written = tree_bytes(partial) if partial else None
        if partial and os.path.isdir(partial):
            shutil.rmtree(partial, ignore_errors=True)
        elif partial and os.path.exists(partial):
            os.remove(partial)
        raise disk_full(folder, what, needed, written, advice) from exc


def publish(tmp, path):
    """Rename a finished temporary file into place, with the permissions a plain ``open`` would give."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates files readable by the owner only
    os.replace(tmp, path)


def atomic_write_text(path, text):
    """Write ``text`` to ``path`` through a temporary file in the same folder (never half-written)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path, data):
    """Write ``data`` to ``path`` through a temporary file in the same folder (never half-written)."""
    with atomic_file(path, len(data)) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path, expected_bytes=None):
    """``with atomic_file(path) as f:`` write bytes to ``f`` piece by piece (a file too large to build in
    memory first); ``path`` appears, complete, only if the block completes, else the partial file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        publish(tmp, path)
    except BaseException as exc:
        written = os.path.getsize(tmp) if os.path.exists(tmp) else 0
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, Exception) and is_disk_full(exc, directory):
            raise disk_full(directory, os.path.basename(path), expected_bytes, written) from exc
        raise


def staging_dir(final):
    """The temporary folder a save into ``final`` writes to (the same name on every rank)."""
    return os.path.normpath(final) + PARTIAL_SUFFIX


def remove_partials(folder):
    """Delete ``*.partial`` folders a killed write left in ``folder``."""
    for path in glob.glob(os.path.join(glob.escape(folder), "*" + PARTIAL_SUFFIX)):
        shutil.rmtree(path, ignore_errors=True)


def publish_dir(staged, final):
    """Rename the complete folder ``staged`` to ``final``, replacing an older ``final``.

    The older folder is first renamed aside (a ``.partial`` name, so a kill in between leaves nothing
    that looks complete under ``final``'s name and the leftover is cleaned up later).
    """
    if os.path.exists(final):
        aside = tempfile.mkdtemp(prefix=os.path.basename(final) + ".old-", suffix=PARTIAL_SUFFIX,
                                 dir=os.path.dirname(os.path.abspath(final)))
        os.rmdir(aside)
        os.replace(final, aside)
        os.replace(staged, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(staged, final)
    sync_dir(os.path.dirname(os.path.abspath(final)))


def sync_dir(folder):
    """Make a rename in ``folder`` durable (a power cut right after it keeps the new name)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final):
    """``with atomic_dir(path) as tmp:`` write into ``tmp``; it becomes ``path`` only if the block completes."""
    parent = os.path.dirname(os.path.abspath(final))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(os.path.normpath(final)) + ".", suffix=PARTIAL_SUFFIX, dir=parent)
    try:
        with space_guard(parent, os.path.basename(os.path.normpath(final)), partial=tmp):
            yield tmp
            publish_dir(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)

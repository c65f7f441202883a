"""Atomic writes: files and folders appear complete or not at all.

A run can be killed at any moment (OOM killer, power cut, a pre-empted cloud GPU). Every file or folder
we write for later use is built under a temporary name beside its destination and renamed into place
when complete; a rename within one file system is atomic, so a reader sees the old state or the new one.
What a kill leaves behind of a folder is a ``*.partial`` folder, which no reader takes for the real one
and the next write removes.
"""
import contextlib
import glob
import os
import shutil
import tempfile

PARTIAL_SUFFIX = ".partial"


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
    with atomic_file(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_file(path):
    """``with atomic_file(path) as f:`` write bytes to ``f`` piece by piece (a file too large to build in
    memory first); ``path`` appears, complete, only if the block completes, else the partial file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
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
        yield tmp
        publish_dir(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)

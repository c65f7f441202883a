"""Atomic file writes: results appear complete or not at all."""
import os
import tempfile


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
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

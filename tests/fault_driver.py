"""Run a repository script with a full disk arranged at one moment (test helper, not a test).

``FILL_DISK_AFTER=<n>``: once the run has published its n-th folder (``files.publish_dir``: a checkpoint),
the file system of ``FILL_DISK_FILE`` is filled to the last byte by writing that file, so the next write of
the run meets a real ``ENOSPC``. Where no small file system can be mounted (not root), ``FILL_DISK_FILE`` is
left unset and ``torch.save`` raises ``OSError(ENOSPC)`` from then on instead.

``argv[1]`` is the script, the rest its arguments.
"""
import errno
import os
import runpy
import sys

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from whisper_finetune import files  # noqa: E402


def fill(path):
    """Write ``path`` until its file system is full (1 MiB pieces, then 4 KiB ones)."""
    with open(path, "wb", buffering=0) as f:
        for size in (2**20, 4096, 512):
            piece = b"\0" * size
            while True:
                try:
                    f.write(piece)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    sys.stderr.write(f"FILLED {path}\n")
    sys.stderr.flush()


def arm(after):
    original_publish, original_save = files.publish_dir, torch.save
    calls = [0]
    target = os.environ.get("FILL_DISK_FILE")

    def failing_save(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def publish_dir(*args, **kwargs):
        result = original_publish(*args, **kwargs)
        calls[0] += 1
        if calls[0] == after:
            if target:
                fill(target)
            else:
                torch.save = failing_save
                sys.stderr.write("FILLED (injected)\n")
        return result

    files.publish_dir = publish_dir


if os.environ.get("FILL_DISK_AFTER"):
    arm(int(os.environ["FILL_DISK_AFTER"]))
script = os.path.join(REPO_ROOT, sys.argv[1])
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")

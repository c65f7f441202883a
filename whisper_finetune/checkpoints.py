"""Kill-safe checkpoints: folders appear complete or not at all, and resuming finds the newest complete one.

A run can be killed at any moment (OOM killer, power cut, a pre-empted cloud GPU). Every folder we
write for later use (``checkpoint-N``, the LoRA ``adapter`` folder, the CTranslate2 conversion) is
built under a temporary name beside its destination and renamed into place when complete; a rename
within one file system is atomic, so a reader sees the old state or the new one. What a kill leaves
behind is a ``*.partial`` folder, which no reader takes for a checkpoint and the next save removes.

Resuming with ``latest`` takes the newest checkpoint whose weights, optimizer, scheduler and trainer
state are all present, and names in one log line any newer folder it skipped (folders written by
other tools, or by older versions of ours, can still be incomplete).
"""
import contextlib
import glob
import logging
import os
import re
import shutil
import tempfile

from .errors import OptionError

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
# Any one of these holds the weights (full model, sharded model, or LoRA adapter).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin")
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_FILES = ("scheduler.pt",)


def staging_dir(final):
    """The temporary folder a save into ``final`` writes to (the same name on every rank)."""
    return os.path.normpath(final) + PARTIAL_SUFFIX


def missing_parts(folder):
    """What a checkpoint folder lacks to resume from: ``[]`` when complete."""
    def has_any(names):
        return any(os.path.exists(os.path.join(folder, n)) for n in names)

    missing = []
    if not has_any(WEIGHT_FILES):
        missing.append("weights")
    # DeepSpeed keeps optimizer and scheduler inside its own global_step* folder.
    deepspeed = bool(glob.glob(os.path.join(folder, "global_step*")))
    if not deepspeed and not has_any(OPTIMIZER_FILES):
        missing.append("optimizer")
    if not deepspeed and not has_any(SCHEDULER_FILES):
        missing.append("scheduler")
    if not os.path.exists(os.path.join(folder, TRAINER_STATE)):
        missing.append("trainer state")
    return missing


def numbered_checkpoints(output_dir):
    """``[(step, folder)]`` of the ``checkpoint-N`` folders in ``output_dir``, newest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), os.path.join(output_dir, name))
             for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name))]
    return sorted(((step, path) for step, path in found if os.path.isdir(path)), reverse=True)


def latest_complete(output_dir):
    """The newest complete ``checkpoint-N`` in ``output_dir`` (``None`` when there is none)."""
    skipped = []
    for _, folder in numbered_checkpoints(output_dir):
        missing = missing_parts(folder)
        if not missing:
            if skipped:
                logger.warning("skipped incomplete checkpoint(s) %s; resuming from %s", "; ".join(skipped), folder)
            return folder
        skipped.append(f"{os.path.basename(folder)} (no {', '.join(missing)})")
    if skipped:
        logger.warning("skipped incomplete checkpoint(s) %s", "; ".join(skipped))
    return None


def resolve_resume(value, output_dir):
    """The checkpoint to resume from: ``None`` (fresh), a complete path, or the newest complete one for ``latest``.

    ``latest`` with no complete checkpoint starts fresh, so rerunning the same command after a kill
    always works; an explicit path that is incomplete is an error.
    """
    if value is None or str(value).lower() == "none":
        return None
    if str(value).lower() == "latest":
        last = latest_complete(output_dir)
        if last is None:
            logger.info("--resume_from_ckpt latest: no complete checkpoint in %s; starting from step 0", output_dir)
        return last
    if not os.path.isdir(value):
        raise OptionError("resume_from_ckpt", value, "no such folder; use None, latest or a checkpoint-N path")
    missing = missing_parts(value)
    if missing:
        raise OptionError("resume_from_ckpt", value, f"not a complete training checkpoint (no {', '.join(missing)}); "
                          f"use latest to take the newest complete one")
    return value


def remove_partials(folder):
    """Delete ``*.partial`` folders a killed save left in ``folder``."""
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
    _sync_dir(os.path.dirname(os.path.abspath(final)))


def _sync_dir(folder):
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

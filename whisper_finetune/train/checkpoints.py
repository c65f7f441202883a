"""Kill-safe checkpoints: resuming finds the newest complete one.

Every ``checkpoint-N`` is written under a temporary ``*.partial`` name and renamed into place when
complete (:mod:`whisper_finetune.files`), so no incomplete folder of ours carries a checkpoint's name.

Resuming with ``latest`` takes the newest checkpoint whose weights, optimizer, scheduler and trainer
state are all present, and names in one log line any newer folder it skipped (folders written by
other tools, or by older versions of ours, can still be incomplete).
"""
import dataclasses
import glob
import json
import logging
import math
import os
import re

from .. import files
from ..errors import OptionError, UserError
from ..model.sources import WEIGHT_FILES  # any one of them holds the weights (full, sharded or LoRA adapter)

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_FILES = ("scheduler.pt",)


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


@dataclasses.dataclass(frozen=True)
class RateOptions:
    """The options that split the optimizer into parameter groups of their own rates, saved in every checkpoint.

    The optimizer's state is restored group by group with each group's saved rate, so a run resumed with other
    values would either stop in torch's loader (another number of groups) or keep the old rates without a
    word; :func:`check_resumed_rates` refuses it first. Checkpoints without the file had one rate throughout.
    """

    FILE = "learning_rates.json"
    encoder_lr_ratio: float = 1.0
    layer_lr_decay: float = 1.0

    def save_pretrained(self, folder):
        """Written like the processor's files (a checkpoint companion: :class:`.trainer.StagedCheckpoints`)."""
        files.atomic_write_text(os.path.join(folder, self.FILE), json.dumps(dataclasses.asdict(self)) + "\n")

    @classmethod
    def of_checkpoint(cls, folder):
        path = os.path.join(folder, cls.FILE)
        if not os.path.exists(path):
            return cls()
        with open(path, encoding="utf-8") as f:
            return cls(**json.load(f))

    def flags(self):
        return " ".join(f"--{name} {value:g}" for name, value in dataclasses.asdict(self).items())


def check_resumed_rates(resume, rates: RateOptions):
    """Refuse to resume ``resume`` with other learning-rate shares than it was trained with."""
    saved = RateOptions.of_checkpoint(resume)
    if saved != rates:
        raise UserError(f"--resume_from_ckpt {resume}: it was trained with {saved.flags()}, this run gives "
                        f"{rates.flags()}; its optimizer keeps a rate per group, so resume with its values")


# Beside weights and optimizer: tokenizer and processor files (about 3 MB for Whisper), scheduler, RNG and
# trainer state, and the file system's own overhead.
CHECKPOINT_EXTRA_BYTES = 8 * 2**20
ADAM_STATE_BYTES = 8  # AdamW keeps two float32 moments per trained weight


def estimate_checkpoint_bytes(model, adapter_only=False):
    """About how many bytes one checkpoint of ``model`` takes: its weights as stored (``adapter_only``: the
    trained ones alone, a LoRA adapter) plus the optimizer's state of every trained weight."""
    parameters = list(model.parameters())
    trained = [p for p in parameters if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in (trained if adapter_only else parameters))
    return weights + ADAM_STATE_BYTES * sum(p.numel() for p in trained) + CHECKPOINT_EXTRA_BYTES


def planned_checkpoints(args):
    """How many checkpoints the run keeps on disk at most: ``--save_total_limit`` + 1 (the one being written
    before the oldest goes), or every save of the run when there is no limit (fewer saves than that: all)."""
    if args.max_steps and args.max_steps > 0 and args.save_steps:
        saves = math.ceil(args.max_steps / args.save_steps)
    else:
        saves = max(1, math.ceil(args.num_train_epochs))
    return min(saves, args.save_total_limit + 1) if args.save_total_limit else saves


def space_warning(output_dir, per_checkpoint, count, final_bytes):
    """The warning to log when ``output_dir``'s device has less free space than ``count`` checkpoints of
    ``per_checkpoint`` bytes plus the final model (``None`` when there is enough)."""
    needed = per_checkpoint * count + final_bytes
    free = files.free_bytes(output_dir)
    if free >= needed:
        return None
    return (f"--output_dir {output_dir}: {files.human_bytes(free)} free, but the run needs about "
            f"{files.human_bytes(needed)} ({count} checkpoint(s) of about {files.human_bytes(per_checkpoint)} "
            f"and the final model); it may stop with a full disk (lower --save_total_limit, or free space)")

"""Run the custom-data training script and SIGKILL it at one precise moment (test helper, not a test).

``KILL_AT=<moment>:<n>`` makes the process kill itself (``kill -9``, no cleanup of any kind) on the
n-th time this run reaches the moment; without it the script runs normally. Moments:

* ``step``: entering a training step;
* ``eval``: entering a prediction step of an evaluation;
* ``weights``: writing model weights (a checkpoint's, or the final model's);
* ``torch_save``: any ``torch.save`` (training arguments, optimizer, scheduler, RNG state);
* ``state``: writing a checkpoint's ``trainer_state.json``;
* ``rename``: a complete checkpoint about to be renamed into place;
* ``final``: moving the final model's files into the output folder.
"""
import os
import runpy
import signal
import sys

import torch
import transformers.modeling_utils
from transformers.trainer_callback import TrainerState

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
from whisper_finetune import files  # noqa: E402
from whisper_finetune.train import output, trainer  # noqa: E402


def _arm(owner, name, moment, target):
    original = getattr(owner, name)
    calls = [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == target:
            sys.stderr.write(f"KILL at {moment} #{target}\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


MOMENTS = {
    "step": (trainer.WhisperTrainer, "training_step"),
    "eval": (trainer.WhisperTrainer, "prediction_step"),
    "weights": (transformers.modeling_utils, "safe_save_file"),
    "torch_save": (torch, "save"),
    "state": (TrainerState, "save_to_json"),
    "rename": (files, "publish_dir"),
    "final": (output, "publish"),
}

if os.environ.get("KILL_AT"):
    moment, count = os.environ["KILL_AT"].split(":")
    _arm(*MOMENTS[moment], moment, int(count))
sys.argv = [os.path.join(REPO_ROOT, "train", "fine-tune_on_custom_dataset.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")

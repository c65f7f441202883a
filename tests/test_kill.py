"""Kill-safe training: a run SIGKILLed at any moment resumes with ``--resume_from_ckpt latest`` and ends
exactly where an uninterrupted run ends.

The kills are real (``kill -9`` of the training process, see ``kill_driver.py``) and placed at the
moments that matter: inside a training step, inside an evaluation, while a checkpoint's weights,
training arguments and trainer state are written, between a complete checkpoint and its rename, and
while the final model is moved into place. One chain of runs takes them in turn, each resuming the
folder the previous kill left, as a user rerunning the same command would.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from whisper_finetune import files
from whisper_finetune.train import checkpoints
from whisper_finetune.errors import OptionError
from whisper_finetune.train.config import TrainConfig
from whisper_finetune.train.checks import check_config

DRIVER = os.path.join(REPO_ROOT, "tests", "kill_driver.py")
# num_steps 6, a checkpoint and an evaluation every 2 steps; each kill is counted within its own run.
CHAIN = [
    ("step:3", "checkpoint-2"),  # during step 3: resumes from step 2
    ("eval:1", "checkpoint-2"),  # steps 3-4 trained, killed inside the evaluation at step 4
    ("weights:1", "checkpoint-2"),  # writing checkpoint-4's weights
    ("torch_save:1", "checkpoint-2"),  # writing checkpoint-4's training arguments
    ("state:1", "checkpoint-2"),  # writing checkpoint-4's trainer state
    ("rename:1", "checkpoint-2"),  # checkpoint-4 complete under its temporary name, not yet renamed
    ("rename:2", "checkpoint-4"),  # checkpoint-4 in place; checkpoint-6 complete, not yet renamed
    ("final:2", "checkpoint-6"),  # training done; killed while moving the final model's files into place
]


def _args(model, data, out):
    return ["--model_name", model, "--language", "hi", "--train_datasets", data, "--eval_datasets", data,
            "--output_dir", out, "--num_steps", "6", "--eval_steps", "2", "--train_batchsize", "2",
            "--eval_batchsize", "4", "--max_eval_samples", "4", "--generation_max_new_tokens", "4",
            "--logging_steps", "1", "--learning_rate", "1e-3", "--report_to", "none", "--resume_from_ckpt", "latest"]


def _start(args, kill_at=None):
    env = {**os.environ, "KILL_AT": kill_at or ""}
    return subprocess.Popen([sys.executable, DRIVER, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _run(args, kill_at=None):
    process = _start(args, kill_at)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _history(out):
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        history = json.load(f)["log_history"]
    losses = {e["step"]: e["loss"] for e in history if "loss" in e}
    evals = {e["step"]: e["eval_loss"] for e in history if "eval_loss" in e}
    return losses, evals


@pytest.mark.slow
def test_killed_at_any_moment_resumes_to_the_same_losses(tiny_model_dir, tiny_dataset_dir, tmp_path):
    reference = str(tmp_path / "reference")
    uninterrupted = _start(_args(tiny_model_dir, tiny_dataset_dir, reference))  # beside the chain (2 cores)
    out = str(tmp_path / "killed")
    for kill_at, resumes_from in CHAIN:
        killed = _run(_args(tiny_model_dir, tiny_dataset_dir, out), kill_at)
        assert killed.returncode == -9, f"{kill_at} did not kill the run: {killed.stderr[-3000:]}"
        assert f"KILL at {kill_at.replace(':', ' #')}" in killed.stderr
        assert not os.path.exists(os.path.join(out, "training_summary.json"))
        # Whatever the kill left, the newest complete checkpoint is the one expected, and no
        # incomplete folder carries a checkpoint's name.
        assert checkpoints.latest_complete(out) == os.path.join(out, resumes_from), kill_at
        for _, folder in checkpoints.numbered_checkpoints(out):
            assert checkpoints.missing_parts(folder) == [], (kill_at, folder)
    finished = _run(_args(tiny_model_dir, tiny_dataset_dir, out))
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "model, processor and generation config:" in finished.stdout
    _, errors = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, errors[-3000:]
    want_losses, want_evals = _history(reference)
    assert sorted(want_losses) == [1, 2, 3, 4, 5, 6] and sorted(want_evals) == [2, 4, 6]

    got_losses, got_evals = _history(out)
    assert sorted(got_losses) == sorted(want_losses) and sorted(got_evals) == sorted(want_evals)
    for step, loss in want_losses.items():
        assert got_losses[step] == pytest.approx(loss, rel=1e-5), step
    for step, loss in want_evals.items():
        assert got_evals[step] == pytest.approx(loss, rel=1e-5), step
    summaries = []
    for folder in (reference, out):
        with open(os.path.join(folder, "training_summary.json"), encoding="utf-8") as f:
            summaries.append(json.load(f))
    assert summaries[1]["global_step"] == 6
    assert summaries[1]["train_loss"] == pytest.approx(summaries[0]["train_loss"], rel=1e-5)
    want, got = (load_file(os.path.join(folder, "model.safetensors")) for folder in (reference, out))
    assert want.keys() == got.keys() and all(torch.allclose(want[k], got[k], atol=1e-6) for k in want)
    assert not [name for name in os.listdir(out) if name.endswith(files.PARTIAL_SUFFIX)]


def _folder(path, files):
    os.makedirs(path)
    for name in files:
        open(os.path.join(path, name), "w").close()
    return str(path)


COMPLETE = ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def test_latest_skips_incomplete_checkpoints_and_names_them(tmp_path, caplog):
    _folder(tmp_path / "checkpoint-2", COMPLETE)
    _folder(tmp_path / "checkpoint-4", ("model.safetensors", "optimizer.pt"))
    _folder(tmp_path / "checkpoint-6.partial", COMPLETE)
    with caplog.at_level("WARNING"):
        assert checkpoints.resolve_resume("latest", str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert "skipped incomplete checkpoint(s) checkpoint-4 (no scheduler, trainer state)" in caplog.text


def test_latest_without_a_complete_checkpoint_starts_fresh(tmp_path):
    _folder(tmp_path / "checkpoint-2", ("model.safetensors",))
    assert checkpoints.resolve_resume("latest", str(tmp_path)) is None


def test_an_incomplete_checkpoint_given_by_path_is_a_one_line_error(tiny_model_dir, tiny_dataset_dir, tmp_path):
    broken = _folder(tmp_path / "out" / "checkpoint-2", ("model.safetensors", "trainer_state.json"))
    config = TrainConfig(model_name=tiny_model_dir, train_datasets=(tiny_dataset_dir,),
                         eval_datasets=(tiny_dataset_dir,), output_dir=str(tmp_path / "out"), language="hi",
                         resume_from_ckpt=broken)
    with pytest.raises(OptionError, match=r"not a complete training checkpoint \(no optimizer, scheduler\)") as info:
        check_config(config)
    assert "\n" not in str(info.value)


def test_publish_dir_replaces_an_older_folder_whole(tmp_path):
    final = _folder(tmp_path / "model", ("old.bin",))
    with files.atomic_dir(final) as staged:
        open(os.path.join(staged, "new.bin"), "w").close()
        assert os.listdir(final) == ["old.bin"]  # nothing changes until the block completes
    assert os.listdir(final) == ["new.bin"]
    with pytest.raises(RuntimeError, match="stop"):
        with files.atomic_dir(final) as staged:
            open(os.path.join(staged, "half.bin"), "w").close()
            raise RuntimeError("stop")
    assert os.listdir(final) == ["new.bin"] and sorted(os.listdir(tmp_path)) == ["model"]

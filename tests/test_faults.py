"""Faults clusters and disks bring (issue 43): preemption, a full disk, two runs in one folder, bad audio, a
killed evaluation.

Signals are real (``kill``), and so is the full disk where the machine allows it: as root a small tmpfs is
mounted and filled to the last byte; elsewhere ``OSError(ENOSPC)`` is injected at the write.
"""
import contextlib
import errno
import glob
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, SENTENCES, run_script, write_corpus
from safetensors.torch import load_file

from whisper_finetune import files, runlock, signals
from whisper_finetune.audio import encode_wav
from whisper_finetune.data import bad_audio
from whisper_finetune.errors import DiskFull, RunLocked, Stopped, UserError
from whisper_finetune.testing import synthetic_speech
from whisper_finetune.train import checkpoints

CUSTOM = "train/fine-tune_on_custom_dataset.py"
HF = "train/fine-tune_on_hf_dataset.py"
EVALUATE = "evaluate/evaluate_on_custom_dataset.py"
FAULT_DRIVER = os.path.join(REPO_ROOT, "tests", "fault_driver.py")
QUICK = ["--language", "hi", "--train_batchsize", "2", "--eval_batchsize", "4", "--max_eval_samples", "4",
         "--generation_max_new_tokens", "4", "--logging_steps", "1", "--learning_rate", "1e-3", "--report_to", "none"]


# ------------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def small_filesystem(path, megabytes):
    """A tmpfs of ``megabytes`` mounted at ``path`` (yields True), or a plain folder where mounting is not
    allowed (yields False: the caller injects ENOSPC instead)."""
    os.makedirs(path, exist_ok=True)
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)], capture_output=True).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path):
    """Write ``path`` until its file system is full."""
    with open(path, "wb", buffering=0) as f:
        for size in (2**20, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)


def descendants(pid):
    """Every process below ``pid`` (Linux /proc)."""
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children", encoding="utf-8") as f:
                for child in map(int, f.read().split()):
                    found += [child] + descendants(child)
    return found


def running(pid):
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def environment_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)


class Output:
    """Collects a process's stdout and stderr lines in threads, so a test can wait for a line."""

    def __init__(self, process):
        self.lines, self.process = [], process
        self.threads = [threading.Thread(target=self._read, args=(stream,), daemon=True)
                        for stream in (process.stdout, process.stderr)]
        for thread in self.threads:
            thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line)

    def wait_for(self, predicate, timeout=300):
        deadline = time.time() + timeout
        while time.time() < deadline and self.process.poll() is None:
            if predicate("".join(self.lines)):
                return True
            time.sleep(0.05)
        return predicate("".join(self.lines))

    def text(self):
        for thread in self.threads:
            thread.join(timeout=30)
        return "".join(self.lines)


def history(out):
    with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
        entries = json.load(f)["log_history"]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


# ------------------------------------------------------------------------------------------------ preemption
def test_first_signal_saves_and_stops_after_the_step_second_aborts():
    """The callback with real signals: SIGTERM only raises the flag; the step's end asks to save and stop; the
    published checkpoint ends the run with 143; a second SIGINT aborts at once."""
    from types import SimpleNamespace

    from transformers.trainer_callback import TrainerControl

    from whisper_finetune.train.preemption import Preemption

    args = SimpleNamespace(world_size=1, process_index=0, device="cpu")
    preemption = Preemption()
    # what the process had before (a shell's background job starts with SIGINT ignored)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with preemption.armed():
        control = TrainerControl()
        preemption.on_step_end(args, SimpleNamespace(global_step=3), control)
        assert not control.should_save and not control.should_training_stop
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the test process goes on
        preemption.on_step_end(args, SimpleNamespace(global_step=4), control)
        assert control.should_save and control.should_training_stop
        preemption.on_save(args, SimpleNamespace(global_step=3), control)  # another step's save: nothing
        with pytest.raises(Stopped, match=r"^preempted at step 4: checkpoint-4 written in [0-9.]+ s; rerun the same "
                                          r"command with --resume_from_ckpt latest$") as stopped:
            preemption.on_save(args, SimpleNamespace(global_step=4), control)
        assert stopped.value.exit_status == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs at the next bytecode
    assert {sig: signal.getsignal(sig) for sig in before} == before  # restored


@pytest.mark.slow
def test_sigterm_to_one_torchrun_rank_checkpoints_every_rank_and_resumes_exactly(tiny_model_dir, tiny_dataset_dir,
                                                                                 tmp_path):
    """SIGTERM to rank 1 alone at a random step: both ranks stop after the same step (the flag is all-reduced),
    exit 143 with one checkpoint, and ``latest`` ends where an uninterrupted run ends."""
    def command(out):
        return list(map(str, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              os.path.join(REPO_ROOT, CUSTOM), "--model_name", tiny_model_dir, "--train_datasets",
                              tiny_dataset_dir, "--eval_datasets", tiny_dataset_dir, "--output_dir", out,
                              "--num_steps", 10, "--eval_steps", 10, *QUICK, "--resume_from_ckpt", "latest"]))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    reference, out = str(tmp_path / "reference"), str(tmp_path / "preempted")
    uninterrupted = subprocess.Popen(command(reference), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
    run = subprocess.Popen(command(out), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env=env)
    output = Output(run)
    at = random.Random().randint(1, 4)
    assert output.wait_for(lambda text: text.count("'loss'") >= at), output.text()[-3000:]
    ranks = {environment_of(pid).get(b"RANK"): pid for pid in descendants(run.pid)
             if environment_of(pid).get(b"RANK") is not None}
    os.kill(ranks[b"1"], signal.SIGTERM)
    run.wait(timeout=300)
    text = output.text()
    preempted = re.search(r"preempted at step (\d+): checkpoint-(\d+) written in [0-9.]+ s; rerun the same command "
                          r"with --resume_from_ckpt latest", text)
    assert preempted and preempted.group(1) == preempted.group(2), text[-4000:]
    step = int(preempted.group(1))
    assert at <= step < 10, (at, step)
    assert text.count("exitcode  : 143") == 2 or text.count("exitcode: 143") == 2 or \
        len(re.findall(r"exitcode\s*:\s*143", text)) == 2, text[-4000:]  # both ranks, as torchrun reports them
    assert [name for _, name in checkpoints.numbered_checkpoints(out)] == [os.path.join(out, f"checkpoint-{step}")]
    assert checkpoints.missing_parts(os.path.join(out, f"checkpoint-{step}")) == []
    assert not os.path.exists(os.path.join(out, runlock.LOCK_FILE))  # released on the way out

    resumed = subprocess.run(command(out), cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    _, errors = uninterrupted.communicate(timeout=600)
    assert uninterrupted.returncode == 0, errors[-3000:]
    want, got = history(reference), history(out)
    assert sorted(want) == list(range(1, 11)) and sorted(got) == sorted(want)
    for number, loss in want.items():
        assert got[number] == pytest.approx(loss, rel=1e-5), number
    weights = [load_file(os.path.join(folder, "model.safetensors")) for folder in (reference, out)]
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], rtol=1e-5, atol=1e-6)


def test_the_staging_folder_outlives_the_slowest_rank_in_train(tmp_path):
    """Every rank lists the staging folder as transformers' ``train()`` ends; rank 0, out first, removes it only
    once every rank is out (a torchrun resume failed with FileNotFoundError when rank 0 was quicker)."""
    from types import SimpleNamespace

    from whisper_finetune.train.run import fit

    staging = tmp_path / "staging.partial"
    (staging / "checkpoint-10").mkdir(parents=True)
    everyone = threading.Barrier(2, timeout=30)
    listed, failures = [], []

    def rank(index):
        def train(resume_from_checkpoint=None):
            if index == 1:
                time.sleep(0.5)  # the slower rank
                listed.append(sorted(os.listdir(staging)))  # as transformers' checkpoint sort does

        trainer = SimpleNamespace(preemption=SimpleNamespace(armed=contextlib.nullcontext), train=train,
                                  accelerator=SimpleNamespace(wait_for_everyone=everyone.wait),
                                  is_world_process_zero=lambda: index == 0,
                                  args=SimpleNamespace(output_dir=str(staging)), output_dir=str(tmp_path))
        try:
            fit(trainer, None, 10)
        except Exception as exc:  # reported to the test's thread below
            failures.append(exc)

    threads = [threading.Thread(target=rank, args=(index,)) for index in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == [] and listed == [["checkpoint-10"]]
    assert not staging.exists()  # removed once both were out


# ------------------------------------------------------------------------------------------------ full disk
@pytest.mark.slow
def test_full_disk_during_a_checkpoint_keeps_the_previous_and_resumes(tiny_model_dir, tiny_dataset_dir, tmp_path):
    with small_filesystem(tmp_path / "disk", 300) as mounted:
        out = str(tmp_path / "disk" / "run")
        ballast = str(tmp_path / "disk" / "ballast")
        args = [CUSTOM, "--model_name", tiny_model_dir, "--train_datasets", tiny_dataset_dir, "--eval_datasets",
                tiny_dataset_dir, "--output_dir", out, "--num_steps", "4", "--eval_steps", "2", *QUICK,
                "--resume_from_ckpt", "latest"]
        env = {**os.environ, "FILL_DISK_AFTER": "1", **({"FILL_DISK_FILE": ballast} if mounted else {})}
        full = subprocess.run([sys.executable, FAULT_DRIVER, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              env=env, timeout=600)
        assert ("FILLED (injected)" if not mounted else f"FILLED {ballast}") in full.stderr, full.stderr[-3000:]
        assert full.returncode == 75, full.stderr[-3000:]
        last = full.stderr.strip().splitlines()[-1]
        assert re.match(rf"error: no space left on the device of {re.escape(out)} while writing checkpoint-4: it "
                        r"needs about [0-9.]+ MB, .* free; the half-written part was removed; checkpoint-2 is "
                        r"complete and kept; free some space and rerun the same command with --resume_from_ckpt "
                        r"latest$", last), last
        assert "Traceback" not in full.stderr
        assert [os.path.basename(f) for _, f in checkpoints.numbered_checkpoints(out)] == ["checkpoint-2"]
        assert checkpoints.missing_parts(os.path.join(out, "checkpoint-2")) == []
        assert not [n for n in os.listdir(out) if n.endswith(files.PARTIAL_SUFFIX)]  # no half-written folder
        assert not os.path.exists(os.path.join(out, runlock.LOCK_FILE))

        if os.path.exists(ballast):
            os.remove(ballast)  # space freed: the same command finishes the run
        finished = run_script(*args)
        assert finished.returncode == 0, finished.stderr[-3000:]
        with open(os.path.join(out, "training_summary.json"), encoding="utf-8") as f:
            summary = json.load(f)
        assert summary["global_step"] == 4 and summary["resumed_from"].endswith("checkpoint-2")


def test_full_disk_while_writing_a_result_or_a_data_prep_output_keeps_the_old_one(tmp_path):
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset

    source = write_corpus(str(tmp_path / "src"), n=4)
    with small_filesystem(tmp_path / "disk", 8) as mounted:
        if not mounted:
            pytest.skip("needs a small tmpfs (root); the checkpoint test injects ENOSPC instead")
        result = str(tmp_path / "disk" / "result.json")
        files.atomic_write_text(result, "old\n")
        prepared = str(tmp_path / "disk" / "prepared")
        prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=prepared))
        before = sorted(os.listdir(prepared))
        fill(str(tmp_path / "disk" / "ballast"))
        with pytest.raises(DiskFull, match=r"^no space left on the device of .*disk while writing result.json: it "
                                           r"needs about 1.0 MB, 0 B free; the half-written part was removed") as info:
            files.atomic_write_text(result, "x" * 10**6)
        assert info.value.exit_status == 75 and "\n" not in str(info.value)
        assert open(result, encoding="utf-8").read() == "old\n"
        assert sorted(os.listdir(tmp_path / "disk")) == ["ballast", "prepared", "result.json"]  # no temporary file
        with pytest.raises(DiskFull, match=r"while writing prepared: it needs about [0-9.]+ kB, 0 B free"):
            prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=prepared, overwrite=True))
        assert sorted(os.listdir(prepared)) == before
        assert sorted(os.listdir(tmp_path / "disk")) == ["ballast", "prepared", "result.json"]


def test_the_space_check_warns_below_the_checkpoints_the_run_keeps(tmp_path):
    from types import SimpleNamespace

    model = torch.nn.Linear(1000, 1000)  # 1001000 float32 weights: 4 MB, and 8 MB of AdamW state
    per_checkpoint = checkpoints.estimate_checkpoint_bytes(model)
    assert per_checkpoint == 1001000 * 12 + checkpoints.CHECKPOINT_EXTRA_BYTES
    args = SimpleNamespace(max_steps=100, save_steps=10, num_train_epochs=3, save_total_limit=2)
    assert checkpoints.planned_checkpoints(args) == 3  # the limit + the one being written
    assert checkpoints.planned_checkpoints(SimpleNamespace(**{**vars(args), "save_total_limit": None})) == 10
    free = shutil.disk_usage(tmp_path).free
    assert checkpoints.space_warning(str(tmp_path), 1000, 3, 1000) is None
    warning = checkpoints.space_warning(str(tmp_path), free, 3, 0)
    assert warning.startswith(f"--output_dir {tmp_path}: ") and "3 checkpoint(s) of about" in warning


# ------------------------------------------------------------------------------------------------ lock
def test_a_second_run_is_refused_while_the_first_holds_the_folder(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = str(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); "
                               "from whisper_finetune import runlock; runlock.acquire(sys.argv[2]); print('held', "
                               "flush=True); time.sleep(120)", REPO_ROOT, out], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = run_script(CUSTOM, "--model_name", tiny_model_dir, "--train_datasets", tiny_dataset_dir,
                            "--eval_datasets", tiny_dataset_dir, "--output_dir", out, "--num_steps", "2", *QUICK)
        assert second.returncode == 2, second.stderr[-2000:]
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: --output_dir {out} is in use by another run (host {socket.gethostname()}, "
                               f"PID {holder.pid}, started "), last
        assert "wait for it to end or choose another --output_dir" in last and "Traceback" not in second.stderr
        assert os.listdir(out) == [runlock.LOCK_FILE]  # nothing of the refused run
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone (kill -9: its lock stays): the next run takes the lock over, with a warning.
    with open(os.path.join(out, runlock.LOCK_FILE), encoding="utf-8") as f:
        assert json.load(f)["pid"] == holder.pid
    with runlock.held(out) as path:
        with open(path, encoding="utf-8") as f:
            assert json.load(f)["pid"] == os.getpid()
    assert not os.path.exists(os.path.join(out, runlock.LOCK_FILE))


def test_a_stale_lock_is_taken_over_with_a_warning_and_a_foreign_one_is_not(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = str(tmp_path / "run")
    os.makedirs(folder)
    lock = os.path.join(folder, runlock.LOCK_FILE)
    with open(lock, "w", encoding="utf-8") as f:
        json.dump({"host": socket.gethostname(), "pid": int(dead.stdout), "started": "2026-12-06T10:00:00"}, f)
    with caplog.at_level("WARNING"):
        assert runlock.acquire(folder) == lock
    assert f"taking over the lock of {folder} from a run that is gone (host {socket.gethostname()}, PID " \
           f"{int(dead.stdout)}" in caplog.text
    runlock.release(lock)
    # A lock from another host cannot be checked: refused, with what to do.
    with open(lock, "w", encoding="utf-8") as f:
        json.dump({"host": "elsewhere", "pid": 1, "started": "2026-12-06T10:00:00"}, f)
    with pytest.raises(RunLocked, match="host elsewhere, PID 1, .*delete the file if that run is over"):
        runlock.acquire(folder)


def test_the_lock_is_released_when_training_fails(tiny_model_dir, tiny_dataset_dir, tmp_path):
    from whisper_finetune.train.config import TrainConfig
    from whisper_finetune.train.run import train

    out = str(tmp_path / "run")
    with pytest.raises(UserError):
        train(TrainConfig(model_name=tiny_model_dir, train_datasets=(tiny_dataset_dir,),
                          eval_datasets=(tiny_dataset_dir,), output_dir=out, language="hi", num_steps=0))
    assert not os.path.exists(out)  # neither the lock nor the folder it was created for
    os.makedirs(out)
    with pytest.raises(UserError):
        train(TrainConfig(model_name=tiny_model_dir, train_datasets=(tiny_dataset_dir,),
                          eval_datasets=(tiny_dataset_dir,), output_dir=out, language="hi", num_steps=0))
    assert os.listdir(out) == []


# ------------------------------------------------------------------------------------------------ bad audio
def _parquet_corpus(folder, n, corrupt=()):
    """A parquet dataset of ``n`` clips with audio bytes (what a Hub dataset holds); rows in ``corrupt`` hold
    bytes that are not audio."""
    import datasets

    rows = {"id": [], "audio": [], "sentence": []}
    for i in range(n):
        data = b"this is not audio at all" if i in corrupt else encode_wav(synthetic_speech(0.5, 16000, seed=i), 16000)
        rows["id"].append(f"clip{i:04d}")
        rows["audio"].append({"bytes": data, "path": f"clip{i:04d}.wav"})
        rows["sentence"].append(SENTENCES[i % len(SENTENCES)])
    dataset = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    os.makedirs(folder)
    dataset.to_parquet(os.path.join(folder, "data.parquet"))
    return folder


def _stream(tiny_model_dir, folder, out, max_bad):
    from types import SimpleNamespace

    from whisper_finetune.data.schema import DatasetSpec
    from whisper_finetune.model import loading
    from whisper_finetune.train.config import TrainConfig
    from whisper_finetune.train.data import prepare_stream
    from whisper_finetune.train.model_setup import configure_tokenizer

    processor = loading.load_processor(tiny_model_dir)
    configure_tokenizer(processor.tokenizer, "hi", "transcribe", False)
    config = TrainConfig(model_name=tiny_model_dir, train_datasets=(folder,), eval_datasets=(folder,),
                         output_dir=out, language="hi", custom=False, streaming=True, shuffle_buffer_size=16,
                         max_bad_examples=max_bad)
    os.makedirs(out, exist_ok=True)
    stream, _ = prepare_stream(config, [DatasetSpec(folder, None, "train")], processor,
                               SimpleNamespace(world_size=1, process_index=0))
    return stream


def test_one_corrupt_file_among_200_streamed_examples(tiny_model_dir, tmp_path, caplog):
    folder = _parquet_corpus(str(tmp_path / "stream"), 200, corrupt={137})
    out = str(tmp_path / "out")
    with caplog.at_level("WARNING"):
        items = list(_stream(tiny_model_dir, folder, out, max_bad=1))
    assert len(items) == 199  # skipped, the others all there
    assert "skipped train example clip0137: cannot read audio" in caplog.text
    assert bad_audio.logged(out, "train") == ["clip0137"]
    limit = bad_audio.LoggedLimit(out, "train", 1)
    limit.check()  # one is allowed
    with pytest.raises(UserError, match=r"^train data \(streamed\): 2 example\(s\) whose audio cannot be decoded "
                                        r"\(clip0137, clip9999\), more than --max_bad_examples 1"):
        bad_audio.BadAudioLog(out, "train").record("clip9999", "not audio")
        limit.check()
    # The default (0): the first bad example stops the stream, named.
    with pytest.raises(UserError, match=r"^example clip0137: cannot read audio .*--max_bad_examples N skips"):
        list(_stream(tiny_model_dir, folder, str(tmp_path / "strict"), max_bad=0))


@pytest.mark.slow
def test_streamed_training_skips_and_counts_a_corrupt_example(tiny_model_dir, tmp_path):
    folder = _parquet_corpus(str(tmp_path / "stream"), 8, corrupt={3})
    eval_folder = _parquet_corpus(str(tmp_path / "eval"), 4, corrupt={1})
    common = ["--model_name", tiny_model_dir, "--train_datasets", folder, "--train_dataset_splits", "train",
              "--eval_datasets", eval_folder, "--eval_dataset_splits", "train", "--streaming", "True",
              "--shuffle_buffer_size", "8", "--num_steps", "4", "--eval_steps", "4", *QUICK]
    out = str(tmp_path / "out")
    ok = run_script(HF, *common, "--output_dir", out, "--max_bad_examples", "1")
    assert ok.returncode == 0, ok.stderr[-3000:]
    with open(os.path.join(out, "training_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["skipped_bad_audio"] == {"eval": 1, "train": 1}
    assert summary["filtering"]["eval"]["skipped_bad_audio"] == 1
    assert "skipped (audio cannot be decoded): 1 eval, 1 train" in ok.stdout
    strict = run_script(HF, *common, "--output_dir", str(tmp_path / "strict"))
    assert strict.returncode == 2 and "Traceback" not in strict.stderr, strict.stderr[-3000:]
    assert strict.stderr.strip().splitlines()[-1].startswith("error: example clip0001: cannot read audio")


def test_evaluation_skips_and_counts_bad_audio_up_to_the_limit(tiny_model_dir, tmp_path):
    from whisper_finetune.decode.options import DecodingOptions
    from whisper_finetune.evaluate.config import EvalConfig
    from whisper_finetune.evaluate.evaluation import evaluate

    data = write_corpus(str(tmp_path / "src"), n=6)
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset

    prepared = str(tmp_path / "prepared")
    prepare_dataset(DataPrepConfig(source_data_dir=data, output_data_dir=prepared))
    import datasets

    dataset = datasets.load_from_disk(prepared)
    dataset = dataset.cast_column("audio", datasets.Audio(sampling_rate=16000, decode=False))
    broken = str(tmp_path / "broken")

    def corrupt(row):
        if row["id"] == "utt0002":
            row["audio"] = {"bytes": b"", "path": "utt0002.wav"}  # empty
        return row

    dataset.map(corrupt).save_to_disk(broken)

    def run(out, limit):
        return evaluate(EvalConfig(hf_model=tiny_model_dir, eval_datasets=(broken,), output_dir=str(out), custom=True,
                                   language="hi", num_workers=0, max_bad_examples=limit,
                                   decoding=DecodingOptions(max_new_tokens=4, batch_size=4)))

    (result,) = run(tmp_path / "ok", 1)
    assert result.skipped_bad_audio == 1 and result.skipped_examples == ["utt0002"]
    assert result.utterances == 5
    text = open(result.txt_path, encoding="utf-8").read()
    assert "# skipped_bad_audio: 1\n# skipped_examples: ['utt0002']" in text and "ID: utt0002" not in text
    assert json.load(open(result.json_path, encoding="utf-8"))["skipped_bad_audio"] == 1
    with pytest.raises(UserError, match=r"utt0002: .*no samples|utt0002: cannot read audio"):
        run(tmp_path / "strict", 0)


# ------------------------------------------------------------------------------------------------ evaluation
def _evaluation(model, data, out, workers=2):
    # JAX imported first, as a JAX-using program does: the DataLoader workers then start from a forkserver,
    # the case that left orphans.
    return [sys.executable, "-c", "import jax, runpy, sys; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')", os.path.join(REPO_ROOT, EVALUATE),
            "--hf_model", model, "--eval_datasets", data, "--output_dir", out, "--language", "hi", "--num_beams", "2",
            "--batch_size", "2", "--num_workers", str(workers), "--max_new_tokens", "4"]


TIMINGS = ("wall_seconds", "rtfx", "utterances_per_second", "model_load_seconds", "compile_seconds")


def _without_timings(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return re.sub(rf'("?)({"|".join(TIMINGS)})("?): [0-9.e+-]+', r"\1\2\3: T", text)


@pytest.mark.slow
def test_a_killed_evaluation_resumes_to_the_same_results_and_leaves_no_process(tiny_model_dir, tmp_path):
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset

    data = str(tmp_path / "data")
    prepare_dataset(DataPrepConfig(source_data_dir=write_corpus(str(tmp_path / "src"), n=24), output_data_dir=data))
    reference, out = str(tmp_path / "reference"), str(tmp_path / "killed")
    uninterrupted = subprocess.run(_evaluation(tiny_model_dir, data, reference, workers=0), cwd=REPO_ROOT,
                                   capture_output=True, text=True, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    run = subprocess.Popen(_evaluation(tiny_model_dir, data, out), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    def progress_lines():
        found = glob.glob(os.path.join(out, "*.progress.jsonl"))
        return open(found[0], encoding="utf-8").read().count("\n") if found else 0

    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None and progress_lines() < 4:
        time.sleep(0.05)
    children = descendants(run.pid)
    assert len(children) >= 2, children  # the workers (and the forkserver) while decoding
    run.send_signal(signal.SIGTERM)
    _, errors = run.communicate(timeout=120)
    assert run.returncode == 143, errors[-3000:]
    assert errors.strip().splitlines()[-1] == "terminated"
    deadline = time.time() + 10
    while time.time() < deadline and any(running(pid) for pid in children):
        time.sleep(0.1)
    assert not [pid for pid in children if running(pid)]  # no worker, no forkserver left behind
    (progress,) = glob.glob(os.path.join(out, "*.progress.jsonl"))
    with open(progress, encoding="utf-8") as f:
        decoded = sum(len(json.loads(line).get("rows", [])) for line in f.readlines()[1:])
    assert 6 <= decoded < 24
    assert not glob.glob(os.path.join(out, "*.txt"))

    resumed = subprocess.run(_evaluation(tiny_model_dir, data, out), cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{decoded} of 24 utterance(s) already decoded" in resumed.stderr
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(reference, "*__data.*")))
    assert len(names) == 2 and sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*__data.*"))) == names
    for name in names:
        assert _without_timings(os.path.join(out, name)) == _without_timings(os.path.join(reference, name)), name
    assert not os.path.exists(progress)


def test_a_progress_file_of_other_options_is_not_reused(tmp_path, caplog):
    from whisper_finetune.evaluate.evaluation import Progress

    path = str(tmp_path / "x.progress.jsonl")
    first = Progress(path, {"model": "a", "decoding": {"num_beams": 1}})
    assert first.load("set") == ({}, {})
    first.append({0: "hello", 2: "world"}, {1: "cannot read audio"}, ["u0", "u1", "u2"])
    with open(path, "ab") as f:
        f.write(b'{"rows": [[3, "u3", "cut sh')  # a kill in the middle of a line
    assert first.load("set") == ({0: "hello", 2: "world"}, {1: "cannot read audio"})
    first.append({3: "again"}, {}, ["u0", "u1", "u2", "u3"])  # appended after the cut line was removed
    assert first.load("set")[0] == {0: "hello", 2: "world", 3: "again"}
    other = Progress(path, {"model": "a", "decoding": {"num_beams": 5}})
    with caplog.at_level("WARNING"):
        assert other.load("set") == ({}, {})
    assert "decoding from the start: the progress file" in caplog.text and "another decoding" in caplog.text


def test_sigterm_becomes_an_exception_that_unwinds_the_stack():
    cleaned = []
    with pytest.raises(signals.Terminated):
        with signals.terminate_raises():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(1)
            finally:
                cleaned.append(True)
    assert cleaned == [True]


@pytest.mark.parametrize("installed, signum", [("terminate_raises", signal.SIGTERM),
                                                ("graceful_stop", signal.SIGTERM), ("graceful_stop", signal.SIGINT)])
def test_a_child_forked_under_our_handler_dies_of_a_signal_sent_at_once(installed, signum):
    """A child forked while our handler is installed takes the signal with the default action, even one sent
    before it ran a line (a pool told to stop just after starting its workers hung on the one it missed)."""
    def fork_and_signal_at_once():
        statuses = []
        for _ in range(10):
            pid = os.fork()
            if pid == 0:  # the child: were the signal lost, it would sleep on and exit 0
                time.sleep(5)
                os._exit(0)
            os.kill(pid, signum)
            statuses.append(os.waitpid(pid, 0)[1])
        return statuses

    if installed == "terminate_raises":
        with signals.terminate_raises():
            statuses = fork_and_signal_at_once()
    else:
        with signals.GracefulStop().installed() as stop:
            statuses = fork_and_signal_at_once()
        assert stop.signum is None  # the children's signals never reached the parent's handler
    assert [os.WIFSIGNALED(status) and os.WTERMSIG(status) for status in statuses] == [signum] * 10


def test_a_script_stopped_by_sigterm_exits_143_with_one_line(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import os, sys, time\nsys.path.insert(0, sys.argv[1])\nfrom whisper_finetune import cli\n"
                      "def main(argv):\n    print('ready', flush=True)\n    time.sleep(60)\n"
                      "cli.run(main)\n", encoding="utf-8")
    process = subprocess.Popen([sys.executable, str(script), REPO_ROOT], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 143 and errors.strip() == "terminated"


def test_disk_full_is_recognised_in_the_forms_libraries_raise_it(tmp_path):
    assert files.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert files.is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert files.is_disk_full(RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })"))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert files.is_disk_full(outer)
    assert not files.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not files.is_disk_full(RuntimeError("file write failed"), str(tmp_path))  # plenty of space here
    assert not files.is_disk_full(DiskFull("no space left on the device of x"))
    assert files.human_bytes(1_234_000_000) == "1.2 GB" and files.human_bytes(12) == "12 B"
    np.testing.assert_equal(files.tree_bytes(str(tmp_path / "none")), 0)

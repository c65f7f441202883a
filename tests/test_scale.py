"""Training at scale (issue 11): model card, push to the Hub, streaming, sharded data, two nodes."""
import glob
import json
import os
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import REPO_ROOT, run_script
from whisper_finetune.model import loading
from whisper_finetune.errors import UserError
from whisper_finetune.train.summary import SUMMARY_FILE
from whisper_finetune.train.config import TrainConfig
from whisper_finetune.train.checks import check_config
from whisper_finetune.train.run import train

HF = "train/fine-tune_on_hf_dataset.py"
CUSTOM = "train/fine-tune_on_custom_dataset.py"
QUICK = dict(train_batchsize=2, eval_batchsize=4, max_eval_samples=4, generation_max_new_tokens=4, logging_steps=1,
             num_steps=2, eval_steps=2, report_to="none", language="hi")


def config(model, data, out, **overrides):
    data = data if isinstance(data, tuple) else (data,)
    return TrainConfig(**{**dict(model_name=model, train_datasets=data, eval_datasets=data[:1], output_dir=str(out)),
                          **QUICK, **overrides})


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No Hugging Face login: no HF_TOKEN and an empty HF_HOME (no stored token)."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "hf_home" / "token"))


@pytest.fixture(scope="module")
def parquet_sets(tiny_dataset_dir, tmp_path_factory):
    """Two local parquet folders (load_dataset reads them, also as streams) with a 'transcription' column."""
    from datasets import load_from_disk

    root = tmp_path_factory.mktemp("parquet")
    full = load_from_disk(tiny_dataset_dir).rename_column("sentence", "transcription")
    folders = []
    for name, rows in (("a", range(0, 5)), ("b", range(5, 8))):
        os.makedirs(root / name)
        full.select(rows).to_parquet(str(root / name / "data.parquet"))
        folders.append(str(root / name))
    return tuple(folders)


def hf_config(model, folders, out, **overrides):
    return config(model, tuple(folders), out, **{**dict(custom=False, train_dataset_splits=("train",) * len(folders),
                                                     eval_dataset_splits=("train",)), **overrides})


# --------------------------------------------------------------------------------------------- card and push
def test_model_card_and_push_receive_the_final_folder(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, private=False, repo_type=None, exist_ok=False):
            calls["create"] = (repo_id, private, exist_ok)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, repo_type=None, ignore_patterns=None, commit_message=None):
            calls["upload"] = (folder_path, repo_id, sorted(os.listdir(folder_path)), ignore_patterns)

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "pushed"
    summary = train(config(tiny_model_dir, tiny_dataset_dir, out, push_to_hub=True, hub_model_id="me/tiny-hi",
                           hub_private_repo=True))
    assert calls["create"] == ("me/tiny-hi", True, True)
    folder, repo_id, files, ignored = calls["upload"]
    assert folder == str(out) and repo_id == "me/tiny-hi"
    for name in ("README.md", "model.safetensors", "config.json", "generation_config.json",
                 "preprocessor_config.json", "tokenizer_config.json", "training_curve.png"):
        assert name in files, name
    assert "checkpoint-*" in ignored and summary.hub_url == "https://huggingface.co/me/tiny-hi"

    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"base_model: {tiny_model_dir}" in card and "language: [hi]" in card
    assert f"| train | `{tiny_dataset_dir}` |" in card and f"| eval | `{tiny_dataset_dir}` |" in card
    assert f"| {summary.best_wer:.4f} | {summary.best_cer:.4f} | {summary.normalizer} | 2 |" in card
    assert f"Training audio: {summary.train_hours:.3f} h" in card and summary.train_hours > 0
    assert "(training_curve.png)" in card and os.path.exists(out / "training_curve.png")
    assert 'pipeline("automatic-speech-recognition", model="me/tiny-hi")' in card
    assert "| num_steps | 2 |" in card and "| processes (world size) | 1 |" in card


@pytest.mark.parametrize("overrides, message", [
    ({"push_to_hub": True}, "--push_to_hub True needs --hub_model_id"),
    ({"push_to_hub": True, "hub_model_id": "me/x"}, "no Hugging Face token found"),
    ({"deepspeed": "/no/such/ds.json"}, "--deepspeed /no/such/ds.json: no such config file"),
    ({"fsdp_config": "/no/such/fsdp.json"}, "--fsdp_config /no/such/fsdp.json: no such config file"),
    ({"interleave_probabilities": (0.5,)}, "--interleave_probabilities needs --streaming True"),
])
def test_scale_options_are_checked_before_training(tiny_model_dir, tiny_dataset_dir, tmp_path, no_token, overrides,
                                                   message):
    with pytest.raises(UserError) as info:
        check_config(config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", **overrides))
    assert message in str(info.value)
    assert not os.path.exists(tmp_path / "out")


def test_script_errors_are_one_line(tiny_model_dir, tiny_dataset_dir, tmp_path, no_token):
    env = {k: os.environ[k] for k in ("HF_HOME",)}
    common = ["--model_name", tiny_model_dir, "--language", "hi", "--train_datasets", tiny_dataset_dir,
              "--eval_datasets", tiny_dataset_dir, "--output_dir", tmp_path / "out"]
    for extra, message in ((["--push_to_hub", "True", "--hub_model_id", "me/x"], "no Hugging Face token found"),
                           (["--push_to_hub", "TRUE"], "needs --hub_model_id"),
                           (["--deepspeed", tmp_path / "missing.json"], "no such config file")):
        proc = run_script(CUSTOM, *common, *extra, env={**env, "HF_TOKEN": ""})
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr[-2000:]
        assert message in proc.stderr
    assert not os.path.exists(tmp_path / "out")


def test_shipped_configs_are_valid_json():
    with open(os.path.join(REPO_ROOT, "configs", "deepspeed_zero2.json"), encoding="utf-8") as f:
        assert json.load(f)["zero_optimization"]["stage"] == 2
    with open(os.path.join(REPO_ROOT, "configs", "fsdp_config.json"), encoding="utf-8") as f:
        assert "WhisperDecoderLayer" in json.load(f)["transformer_layer_cls_to_wrap"]


# --------------------------------------------------------------------------------------------- streaming
@pytest.mark.parametrize("overrides, message", [
    ({"train_strategy": "epoch"}, "--streaming True needs --train_strategy steps"),
    ({"interleave_probabilities": (1.0,)}, "1 value(s) for 2 --train_datasets"),
    ({"shuffle_buffer_size": 0}, "--shuffle_buffer_size 0: must be at least 1"),
])
def test_streaming_option_errors(tiny_model_dir, parquet_sets, tmp_path, overrides, message):
    with pytest.raises(UserError) as info:
        check_config(hf_config(tiny_model_dir, parquet_sets, tmp_path / "o", streaming=True, **overrides))
    assert message in str(info.value)


def test_streaming_bad_dataset_or_column_is_one_line(tiny_model_dir, parquet_sets, tmp_path):
    common = ["--model_name", tiny_model_dir, "--language", "hi", "--streaming", "True", "--eval_datasets",
              parquet_sets[0], "--eval_dataset_splits", "train", "--output_dir", tmp_path / "out"]
    for extra, message in ((["--train_datasets", tmp_path / "nothing"], "cannot load dataset"),
                           (["--train_datasets", parquet_sets[0], "--train_dataset_splits", "train",
                             "--train_dataset_text_columns", "words"], "no text column 'words'")):
        proc = run_script(HF, *common, *extra)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith("error:")
        assert "Traceback" not in proc.stderr


def _stream_labels(tiny_model_dir, folders, tmp_path, world_size, rank, **overrides):
    from whisper_finetune.data.schema import DatasetSpec
    from whisper_finetune.train.data import prepare_stream
    from whisper_finetune.train.model_setup import configure_tokenizer

    processor = loading.load_processor(tiny_model_dir)
    configure_tokenizer(processor.tokenizer, "hi", "transcribe", False)
    cfg = hf_config(tiny_model_dir, folders, tmp_path / "o", streaming=True, shuffle_buffer_size=4, **overrides)
    specs = [DatasetSpec(f, None, "train") for f in folders]
    stream, _ = prepare_stream(cfg, specs, processor, SimpleNamespace(world_size=world_size, process_index=rank))
    items = list(stream)
    assert all(item["input_features"].shape == (80, 3000) for item in items)
    return [processor.tokenizer.decode(item["labels"], skip_special_tokens=True) for item in items]


def test_stream_is_interleaved_featurised_and_split_by_rank(tiny_model_dir, tiny_dataset_dir, parquet_sets, tmp_path):
    from conftest import SENTENCES

    everything = _stream_labels(tiny_model_dir, (tiny_dataset_dir,), tmp_path, 1, 0)
    assert sorted(everything) == sorted(SENTENCES)  # one pass reads each example once, in shuffled order
    assert everything != SENTENCES
    ranks = [_stream_labels(tiny_model_dir, (tiny_dataset_dir,), tmp_path, 2, r) for r in (0, 1)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(SENTENCES)
    # all_exhausted interleaving: every example of both sets at least once
    mixed = _stream_labels(tiny_model_dir, parquet_sets, tmp_path, 1, 0, interleave_probabilities=(0.5, 0.5))
    assert set(mixed) == set(SENTENCES)


def test_parquet_stream_reads_row_groups_on_demand(tmp_path):
    """Streamed parquet gives load_dataset's rows, and reading one example decodes about one row group,
    not the rest of the file in the background (which made streaming memory grow with file size)."""
    import time

    import datasets
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from whisper_finetune.data.loading import load_hf_dataset
    from whisper_finetune.data.schema import DatasetSpec

    rng = np.random.default_rng(0)
    rows_per_group, groups, payload = 50, 40, 20_000  # 40 row groups of 1 MB of incompressible bytes
    os.makedirs(tmp_path / "big")
    with pq.ParquetWriter(tmp_path / "big" / "data.parquet", pa.schema([("blob", pa.binary()), ("i", pa.int64())])) as w:
        for g in range(groups):
            ids = range(g * rows_per_group, (g + 1) * rows_per_group)
            w.write_table(pa.table({"blob": [rng.bytes(payload) for _ in ids], "i": list(ids)}))
    spec = DatasetSpec(str(tmp_path / "big"), None, "train")

    ours = iter(load_hf_dataset(spec, streaming=True))
    baseline = pa.total_allocated_bytes()
    first = next(ours)
    time.sleep(1.0)  # a slow consumer: a threaded scanner would decode ahead meanwhile
    read_ahead = pa.total_allocated_bytes() - baseline
    assert first["i"] == 0 and read_ahead < 4 * rows_per_group * payload, read_ahead  # file: 40 MB
    reference = datasets.load_dataset(str(tmp_path / "big"), split="train", streaming=True)
    assert [r["i"] for r in load_hf_dataset(spec, streaming=True)] == [r["i"] for r in reference]
    assert list(load_hf_dataset(spec, streaming=True).take(3)) == list(reference.take(3))


def test_streaming_training_run(tiny_model_dir, parquet_sets, tmp_path):
    out = tmp_path / "streamed"
    summary = train(hf_config(tiny_model_dir, parquet_sets, out, streaming=True, num_steps=3, eval_steps=3,
                              train_dataset_text_columns=("transcription", "transcription"),
                              eval_datasets=parquet_sets, eval_dataset_splits=("train", "train")))
    assert summary.global_step == 3 and summary.samples_trained == 6
    assert summary.train_samples is None and summary.train_hours is None
    assert summary.filtering["train"]["probabilities"] == [0.5, 0.5]  # sizes unknown -> equal
    assert os.path.exists(out / "model.safetensors") and os.path.exists(out / "README.md")
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "unknown (streamed)" in card
    # the card has the combined row and one row per evaluation dataset (final model, each on its own)
    rows = summary.eval_per_dataset
    assert [(r.dataset, r.samples) for r in rows] == [(f"{parquet_sets[0]}/train", 4),
                                                            (f"{parquet_sets[1]}/train", 3)]
    assert summary.eval_samples == 4  # combined set, cut to --max_eval_samples
    for row in rows:
        assert f"| `{row.dataset}` ({row.samples} utterances) | {row.wer:.4f} | {row.cer:.4f} |" in card


# --------------------------------------------------------------------------------------------- sharded data
def test_sharded_data_prep_is_read_by_training(tiny_model_dir, tmp_path):
    from conftest import write_corpus
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset
    from whisper_finetune.data.loading import load_hf_dataset
    from whisper_finetune.data.schema import DatasetSpec

    source = write_corpus(str(tmp_path / "src"), n=6)
    data = str(tmp_path / "sharded")
    proc = run_script("custom_data/data_prep.py", "--source_data_dir", source, "--output_data_dir", data,
                      "--num_shards", 3)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(glob.glob(os.path.join(data, "data-*-of-00003.arrow"))) == 3
    assert load_hf_dataset(DatasetSpec(data), streaming=True).n_shards == 3
    small = str(tmp_path / "small-shards")
    prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=small, max_shard_size="100KB"))
    assert len(glob.glob(os.path.join(small, "data-*.arrow"))) > 1
    summary = train(config(tiny_model_dir, data, tmp_path / "out"))  # memory-mapped, shard by shard
    assert summary.train_samples == 6 and summary.global_step == 2


# --------------------------------------------------------------------------------------------- two nodes
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["two_nodes", "one_node_two_processes"])
def test_torchrun_streaming_rank_zero_writes(tiny_model_dir, tiny_dataset_dir, tmp_path, layout):
    out = str(tmp_path / layout)
    port = _free_port()
    launchers = [["--nnodes=2", "--nproc_per_node=1", f"--node_rank={node}", "--rdzv_backend=c10d",
                  f"--rdzv_endpoint=127.0.0.1:{port}"] for node in (0, 1)] if layout == "two_nodes" \
        else [["--standalone", "--nproc_per_node=2"]]
    script = [os.path.join(REPO_ROOT, HF), "--model_name", tiny_model_dir, "--language", "hi", "--train_datasets",
              tiny_dataset_dir, "--eval_datasets", tiny_dataset_dir, "--streaming", "True", "--shuffle_buffer_size", 8,
              "--num_steps", 2, "--eval_steps", 2, "--output_dir", out, "--train_batchsize", 2, "--eval_batchsize", 2,
              "--max_eval_samples", 2, "--generation_max_new_tokens", 4, "--report_to", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(list(map(str, [sys.executable, "-m", "torch.distributed.run", *launcher, *script])),
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for launcher in launchers]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-4000:]
    logs = "".join(err for _, err in results)
    assert "process 0 of 2" in logs and "process 1 of 2" in logs  # both ranks took part
    with open(os.path.join(out, SUMMARY_FILE), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["world_size"] == 2 and summary["global_step"] == 2 and summary["samples_trained"] == 8
    assert os.path.exists(os.path.join(out, "model.safetensors")) and os.path.exists(os.path.join(out, "README.md"))
    assert sum(text.count("best eval WER:") for text, _ in results) == 1  # only rank 0 reports
    assert logs.count("wrote the training curve") == 1  # only rank 0 writes (c10d may give either node rank 0)

@pytest.mark.slow
def test_streaming_resume_continues_in_the_stream(tiny_model_dir, tiny_dataset_dir, tmp_path):
    import shutil

    def run(out, **overrides):
        return train(hf_config(tiny_model_dir, (tiny_dataset_dir,), out, streaming=True, num_steps=6, eval_steps=3,
                               learning_rate=1e-3, shuffle_buffer_size=4, **overrides))

    def losses(out):
        with open(os.path.join(out, "trainer_state.json"), encoding="utf-8") as f:
            return {e["step"]: e["loss"] for e in json.load(f)["log_history"] if "loss" in e}

    full, resumed = tmp_path / "full", tmp_path / "resumed"
    run(full)  # 6 steps of 2 = 12 examples: the 8-clip stream is passed 1.5 times (second pass reshuffled)
    os.makedirs(resumed)
    shutil.copytree(full / "checkpoint-3", resumed / "checkpoint-3")
    summary = run(resumed, resume_from_ckpt="latest")
    assert summary.global_step == 6 and summary.resumed_from.endswith("checkpoint-3")
    for step in (4, 5, 6):
        assert losses(resumed)[step] == pytest.approx(losses(full)[step], rel=1e-4), step

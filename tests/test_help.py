"""Every script's ``-h`` (run in-process) lists each of its flags with the help text declared on its option
dataclass, so the parser cannot lose a flag or its explanation; and ``-h``, a mistyped flag, a value no run
could use or a model or dataset folder that is not there is answered before any heavy library is imported."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from whisper_finetune.cli import CUSTOM_ONLY_EVAL, HF_ONLY_EVAL
from whisper_finetune.data.config import DataPrepConfig
from whisper_finetune.decode.config import DemoConfig, TranscribeConfig
from whisper_finetune.embeddings_config import EmbeddingConfig
from whisper_finetune.evaluate.config import EvalConfig, ReportConfig
from whisper_finetune.export.config import ExportOptions
from whisper_finetune.options import flags_of
from whisper_finetune.train.config import HF_ONLY, TrainConfig

SCRIPTS = [
    ("custom_data/data_prep.py", DataPrepConfig, ()),
    ("train/fine-tune_on_custom_dataset.py", TrainConfig, HF_ONLY),
    ("train/fine-tune_on_hf_dataset.py", TrainConfig, ()),
    ("evaluate/evaluate_on_custom_dataset.py", EvalConfig, HF_ONLY_EVAL),
    ("evaluate/evaluate_on_hf_dataset.py", EvalConfig, CUSTOM_ONLY_EVAL),
    ("evaluate/jax_evaluate_on_custom_dataset.py", EvalConfig, HF_ONLY_EVAL),
    ("evaluate/jax_evaluate_on_hf_dataset.py", EvalConfig, CUSTOM_ONLY_EVAL),
    ("transcribe_audio.py", TranscribeConfig, ()),
    ("jax_transcribe_audio.py", TranscribeConfig, ()),
    ("extract_embeddings.py", EmbeddingConfig, ()),
    ("evaluate/report.py", ReportConfig, ()),
    ("demo.py", DemoConfig, ()),
    ("export_model.py", ExportOptions, ()),
]


def script_main(path):
    """The ``main`` of a repository script, imported as a module (no subprocess)."""
    spec = importlib.util.spec_from_file_location(re.sub(r"\W", "_", path), os.path.join(REPO_ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("script, config, excluded", SCRIPTS, ids=[s[0] for s in SCRIPTS])
def test_help_explains_every_flag(script, config, excluded, capsys):
    with pytest.raises(SystemExit) as exited:
        script_main(script)(["-h"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    shown, packed = " ".join(text.split()), "".join(text.split())  # argparse wraps lines, also at hyphens
    flags = flags_of(config, excluded)
    assert flags and "--verbose" in shown
    for flag in flags:
        assert re.search(rf"{re.escape(flag.usage)}\b", shown), flag.name
        assert "".join(flag.help.split()[:6]) in packed, flag.name
    for name in excluded:
        assert not re.search(rf"--{name}\b", shown), name


# Libraries that take seconds to import (torch and transformers each over a second on a 2-core CPU).
HEAVY_LIBRARIES = ("torch", "transformers", "datasets", "jax", "jiwer", "ctranslate2", "gradio")
# Runs a script as ``python SCRIPT ARGS...`` would, then prints which heavy libraries it imported.
RUN_AND_LIST_IMPORTS = """
import json, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    code = exc.code
heavy = [name for name in json.loads(sys.stdin.read()) if name in sys.modules]
print(json.dumps({"code": code, "heavy": heavy}))
"""


def _run_listing_imports(script, args):
    """``(outcome, stderr)`` of ``python SCRIPT ARGS``: outcome is its exit status and the heavy libraries it
    imported."""
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST_IMPORTS, os.path.join(REPO_ROOT, script), *args],
                          input=json.dumps(HEAVY_LIBRARIES), capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


@pytest.mark.parametrize("args, status", [(["-h"], 0), (["--no_such_flag", "1"], 2)], ids=["help", "bad-flag"])
@pytest.mark.parametrize("script", [s[0] for s in SCRIPTS])
def test_help_and_flag_errors_import_no_heavy_library(script, args, status):
    outcome, stderr = _run_listing_imports(script, args)
    assert outcome == {"code": status, "heavy": []}, stderr[-2000:]


TRAIN_ARGS = ["--model_name", "m", "--train_datasets", "d", "--eval_datasets", "e", "--output_dir", "o"]
EVAL_ARGS = ["--hf_model", "m", "--output_dir", "o"]
CLIP = "sample_data/audio/sample_0000.flac"  # the scripts run in the repository's root
MERGE_RATIO_ERROR = "error: --merge_ratio 2: give a number above 0 and at most 1, or auto"
NUM_BEAMS_ERROR = "error: --num_beams 0: must be 1 (greedy) or more"
NO_DATASET = "no such dataset folder (make one with custom_data/data_prep.py)"
NO_MODEL = "no/such/model"  # three parts: a path, not a Hub id
NO_SUCH_MODEL = "no such folder, and not a Hub id (owner/name)"
BAD_VALUES = [
    ("train/fine-tune_on_custom_dataset.py", TRAIN_ARGS + ["--merge_ratio", "2"], MERGE_RATIO_ERROR),
    ("train/fine-tune_on_hf_dataset.py", TRAIN_ARGS + ["--merge_ratio", "2"], MERGE_RATIO_ERROR),
    ("train/fine-tune_on_custom_dataset.py", TRAIN_ARGS + ["--freeze_encoder", "True", "--freeze_decoder", "True"],
     "error: --freeze_encoder True and --freeze_decoder True together leave nothing to train; pick one"),
    ("train/fine-tune_on_custom_dataset.py", TRAIN_ARGS + ["--freeze_encoder", "True", "--encoder_lr_ratio", "0.1"],
     "error: --encoder_lr_ratio 0.1 with --freeze_encoder: the encoder is not trained; leave --encoder_lr_ratio out"),
    ("train/fine-tune_on_hf_dataset.py", TRAIN_ARGS + ["--layer_lr_decay", "1.5"],
     "error: --layer_lr_decay 1.5: give a number above 0 and at most 1 (1: one rate for every layer)"),
    ("evaluate/evaluate_on_custom_dataset.py", EVAL_ARGS + ["--eval_datasets", "e", "--num_beams", "0"],
     NUM_BEAMS_ERROR),
    ("evaluate/evaluate_on_hf_dataset.py", EVAL_ARGS + ["--dataset", "d", "--num_beams", "0"], NUM_BEAMS_ERROR),
    ("evaluate/jax_evaluate_on_custom_dataset.py", EVAL_ARGS + ["--eval_datasets", "e", "--audio_context", "dynamic"],
     "error: --audio_context dynamic: needs --backend pytorch or ctranslate2 (the JAX decoder is compiled for one "
     "input shape, 30 s)"),
    ("transcribe_audio.py", ["--hf_model", "m", "--path_to_audio", CLIP, "--search_seconds", "20"],
     "error: --search_seconds 20.0: must be more than 0 and at most 15"),
    ("transcribe_audio.py", ["--hf_model", "m", "--path_to_audio", CLIP, "--output", "talk.docx"],
     "error: --output talk.docx: unknown extension; use one of .txt, .srt, .vtt, .json"),
    ("jax_transcribe_audio.py", ["--hf_model", "m", "--path_to_audio", CLIP, "--timestamps", "True"],
     "error: --timestamps True: only --backend pytorch decodes long-form on timestamps (transformers' generate); "
     "with --backend jax leave it False: long audio is then cut at silence"),
    ("demo.py", ["--hf_model", "m", "--server_port", "70000"],
     "error: --server_port 70000: must be between 1 and 65535"),
    ("export_model.py", ["--model", "m", "--format", "ggml", "--quantization", "q4_0", "--output_dir", "o"],
     "error: --quantization q4_0: not accepted by --format ggml (ggml: f16, q8_0, q5_0)"),
    ("extract_embeddings.py", ["--model", "m", "--path_to_audio", CLIP, "--output_dir", "o", "--embeddings",
                               "encoder_hidden_states"],
     "error: --embeddings 'encoder_hidden_states': encoder_hidden_states needs a layer index, e.g. "
     "encoder_hidden_states[-1]; valid names: encoder_last_hidden_state, encoder_hidden_states[i], "
     "last_hidden_state, decoder_hidden_states[i]"),
    ("custom_data/data_prep.py", ["--source_data_dir", "sample_data", "--output_data_dir", "o", "--sampling_rate", "0"],
     "error: --sampling_rate 0: must be a positive number of Hz"),
    ("evaluate/report.py", ["results", "--output", "o.html", "--max_embedded_audio_mb", "-1"],
     "error: --max_embedded_audio_mb -1.0: must be 0 or more"),
    # model and dataset paths: checked from the file system alone, before the libraries load
    ("train/fine-tune_on_custom_dataset.py", TRAIN_ARGS, "error: d: " + NO_DATASET),
    ("train/fine-tune_on_custom_dataset.py", ["--model_name", "sample_data"] + TRAIN_ARGS[2:],
     "error: --model_name sample_data: folder holds no model (no config.json)"),
    ("evaluate/evaluate_on_custom_dataset.py", EVAL_ARGS + ["--eval_datasets", "sample_data"],
     "error: sample_data: not a data_prep dataset (no dataset_info.json); make one with custom_data/data_prep.py"),
    ("evaluate/evaluate_on_hf_dataset.py", ["--hf_model", NO_MODEL, "--output_dir", "o", "--dataset", "d"],
     f"error: --hf_model {NO_MODEL}: " + NO_SUCH_MODEL),
    ("transcribe_audio.py", ["--hf_model", NO_MODEL, "--path_to_audio", CLIP], f"error: --hf_model {NO_MODEL}: "
     + NO_SUCH_MODEL),
    ("demo.py", ["--hf_model", "m", "--compare_model", NO_MODEL], f"error: --compare_model {NO_MODEL}: "
     + NO_SUCH_MODEL),
    ("export_model.py", ["--model", "sample_data", "--format", "ggml", "--output_dir", "o"],
     "error: --model sample_data: folder holds no model (no config.json or weights: looked for model.safetensors, "
     "model.safetensors.index.json, pytorch_model.bin)"),
    ("extract_embeddings.py", ["--model", "m", "--eval_datasets", "e", "--output_dir", "o"], "error: e: " + NO_DATASET),
]


@pytest.mark.parametrize("script, args, message", BAD_VALUES, ids=[f"{s}-{a[-2]}" for s, a, _ in BAD_VALUES])
def test_a_bad_value_is_refused_before_any_heavy_import(script, args, message):
    outcome, stderr = _run_listing_imports(script, args)
    assert outcome == {"code": 2, "heavy": []}, stderr[-2000:]
    assert stderr.strip() == message


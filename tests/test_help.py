"""Every script's ``-h`` (run in-process) lists each of its flags with the help text declared on its option
dataclass, so the parser cannot lose a flag or its explanation; and ``-h`` or a mistyped flag answers before
any heavy library is imported."""
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


@pytest.mark.parametrize("args, status", [(["-h"], 0), (["--no_such_flag", "1"], 2)], ids=["help", "bad-flag"])
@pytest.mark.parametrize("script", [s[0] for s in SCRIPTS])
def test_help_and_flag_errors_import_no_heavy_library(script, args, status):
    done = subprocess.run([sys.executable, "-c", RUN_AND_LIST_IMPORTS, os.path.join(REPO_ROOT, script), *args],
                          input=json.dumps(HEAVY_LIBRARIES), capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=120)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome == {"code": status, "heavy": []}, done.stderr[-2000:]

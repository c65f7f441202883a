"""Every script's ``-h`` (run in-process) lists each of its flags with the help text declared on its option
dataclass, so the parser cannot lose a flag or its explanation."""
import importlib.util
import os
import re

import pytest
from conftest import REPO_ROOT

from whisper_finetune.cli import CUSTOM_ONLY_EVAL, HF_ONLY_EVAL
from whisper_finetune.data.corpus import DataPrepConfig
from whisper_finetune.demo import DemoConfig
from whisper_finetune.embeddings import EmbeddingConfig
from whisper_finetune.evaluate.evaluation import EvalConfig
from whisper_finetune.export.run import ExportOptions
from whisper_finetune.options import flags_of
from whisper_finetune.evaluate.report import ReportConfig
from whisper_finetune.train.config import HF_ONLY, TrainConfig
from whisper_finetune.decode.transcription import TranscribeConfig

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

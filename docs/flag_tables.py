"""The documentation site's flag tables, generated from the option dataclasses: a MkDocs hook.

``mkdocs.yml`` names this file under ``hooks:``; as each page is read, every line
``<!-- flags: NAME -->`` becomes the table NAME below, so a flag's type, default and help are written
once, on its dataclass, and no page can drift from the scripts' ``-h``. An unknown NAME stops the build.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune.cli import CUSTOM_ONLY_EVAL, HF_ONLY_EVAL  # noqa: E402
from whisper_finetune.data.config import DataPrepConfig  # noqa: E402
from whisper_finetune.decode.config import DemoConfig, TranscribeConfig  # noqa: E402
from whisper_finetune.embeddings_config import EmbeddingConfig  # noqa: E402
from whisper_finetune.evaluate.config import EvalConfig, ReportConfig  # noqa: E402
from whisper_finetune.export.config import ExportOptions  # noqa: E402
from whisper_finetune.options import markdown_table  # noqa: E402
from whisper_finetune.train.config import HF_ONLY, TrainConfig  # noqa: E402

SCALE = ("streaming", "interleave_probabilities", "shuffle_buffer_size", "deepspeed", "fsdp", "fsdp_config",
         "push_to_hub", "hub_model_id", "hub_private_repo")
LONGFORM = ("timestamps", "word_timestamps", "vad", "temperature_fallback", "compression_ratio_threshold",
            "logprob_threshold", "no_speech_threshold", "condition_on_previous_text")
# Timestamp training (docs/recipes/subtitles.md).
TIMESTAMPS = ("timestamps", "timestamp_ratio")
# Retain sets, the best-model choice, early stopping and merging with the base model (docs/retain.md);
# the HF script's per-dataset retain lists are in train_hf_only.
RETAIN = ("retain_datasets", "retain_language", "metric_for_best_model", "early_stopping_patience", "merge_ratio",
          "merge_tolerance", "merge_encoder_ratio")
# Replay and augmentation (docs/retain.md); the HF script's per-dataset replay lists are in
# train_hf_only.
REPLAY_AUGMENT = ("replay_datasets", "replay_audio", "replay_language", "replay_ratio", "spec_augment",
                  "mask_time_prob", "mask_time_length", "mask_feature_prob", "mask_feature_length", "augment",
                  "noise_dir", "augment_snr_db", "augment_pitch_semitones")
TABLES = {
    "data_prep": lambda: markdown_table(DataPrepConfig),
    "train": lambda: markdown_table(TrainConfig, exclude=HF_ONLY),
    "train_hf_only": lambda: markdown_table(TrainConfig, only=HF_ONLY),
    "train_scale": lambda: markdown_table(TrainConfig, only=SCALE),
    "timestamps": lambda: markdown_table(TrainConfig, only=TIMESTAMPS),
    "train_retain": lambda: markdown_table(TrainConfig, only=RETAIN),
    "train_replay_augment": lambda: markdown_table(TrainConfig, only=REPLAY_AUGMENT),
    "evaluate": lambda: markdown_table(EvalConfig, exclude=HF_ONLY_EVAL, required=CUSTOM_ONLY_EVAL),
    "evaluate_hf_only": lambda: markdown_table(EvalConfig, required=("dataset",), only=HF_ONLY_EVAL),
    "transcribe": lambda: markdown_table(TranscribeConfig),
    "longform": lambda: markdown_table(TranscribeConfig, only=LONGFORM),
    "embeddings": lambda: markdown_table(EmbeddingConfig),
    "demo": lambda: markdown_table(DemoConfig),
    "report": lambda: markdown_table(ReportConfig),
    "export": lambda: markdown_table(ExportOptions),
}
MARKER = "<!-- flags: "


def fill(text, where="<stdin>"):
    """``text`` with every flags marker line replaced by its table."""
    lines = []
    for line in text.splitlines():
        if line.startswith(MARKER):
            name = line[len(MARKER):].split()[0]
            if name not in TABLES:
                raise ValueError(f"{where}: unknown flag table {name!r}; known: {', '.join(TABLES)}")
            lines.append(TABLES[name]())
        else:
            lines.append(line)
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown, page, **kwargs):
    """MkDocs hook: expand the markers of each page before it is rendered."""
    return fill(markdown, page.file.src_uri)

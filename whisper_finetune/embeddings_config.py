"""The options of extract_embeddings.py and the names of what it extracts.

Declared apart from :mod:`whisper_finetune.embeddings` (torch, transformers, datasets): ``-h`` and a mistyped
flag answer before those imports.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

from .data.schema import AUDIO_COLUMN
from .options import option

# Hidden states by transformers' output names (see :mod:`whisper_finetune.embeddings`).
ENCODER_LAST = "encoder_last_hidden_state"
ENCODER_STATES = "encoder_hidden_states"
DECODER_LAST = "last_hidden_state"
DECODER_STATES = "decoder_hidden_states"
EMBEDDING_SOURCES = (ENCODER_LAST, ENCODER_STATES, DECODER_LAST, DECODER_STATES)
POOLING = ("none", "mean")
DECODER_PROMPTS = ("start", "forced")


@dataclass(frozen=True)
class EmbeddingConfig:
    """Options of :func:`whisper_finetune.embeddings.extract_embeddings` (one per extract_embeddings.py flag).

    Exactly one input: ``audio_paths`` (files), ``eval_datasets`` (data_prep folders) or ``dataset``
    (a Hugging Face dataset id or folder, with ``dataset_config``/``split``).
    """

    model: str = option(help="Hub id, local model folder, checkpoint folder written by our trainer (a bare "
                        "checkpoint-N takes the processor from its parent) or LoRA adapter folder")
    output_dir: str = option(help="folder for the .npz files and manifest.json")
    audio_paths: Tuple[str, ...] = option((), "audio file(s) (wav/flac/ogg/mp3, any rate); keyed by file name "
                                          "without extension", flag="path_to_audio", group="input (exactly one)")
    eval_datasets: Tuple[str, ...] = option((), "data_prep output folder(s); keyed by utterance id",
                                            group="input (exactly one)")
    dataset: Optional[str] = option(None, "Hugging Face dataset (Hub id or local folder)", group="input (exactly one)")
    dataset_config: Optional[str] = option(None, "configuration of --dataset (e.g. a language)", flag="config",
                                           group="input (exactly one)")
    split: str = option("test", "split of --dataset", group="input (exactly one)")
    text_column: Optional[str] = option(None, "transcription column of --dataset", group="input (exactly one)",
                                        default_text="found automatically when it has a usual name")
    audio_column: str = option(AUDIO_COLUMN, "audio column of --dataset", group="input (exactly one)")
    embeddings: Tuple[str, ...] = option((ENCODER_LAST,), "what to extract, several at once: "
                                         "encoder_last_hidden_state, last_hidden_state, encoder_hidden_states[i], "
                                         "decoder_hidden_states[i] (i may be negative; quote the brackets in the "
                                         "shell)")
    pool: str = option("mean", "mean: one vector per utterance, averaged over time; none: every frame (encoder) or "
                       "prompt position (decoder)", choices=POOLING)
    pool_over_padding: bool = option(False, "use all 1500 encoder frames of the 30 s window (padding included) "
                                     "instead of only the frames covering the audio, for --pool mean and --pool "
                                     "none alike")
    split_long: bool = option(False, "embed every 30 s window of longer audio (keys <id>#0, <id>#1, ...) instead "
                              "of only the first 30 s")
    decoder_prompt: str = option("start", "decoder input: start = the decoder start token <|startoftranscript|> "
                                 "only; forced = <|startoftranscript|><|lang|><|task|><|notimestamps|> (needs "
                                 "--language on multilingual models)", choices=DECODER_PROMPTS)
    language: Optional[str] = option(None, "language of the forced prompt, name or code (hi, Hindi)")
    task: str = option("transcribe", "task token of the forced prompt", choices=("transcribe", "translate"))
    batch_size: int = option(16, "clips per forward pass")
    device: int = option(-1, "-1 for CPU, N for GPU N")
    overwrite: bool = option(False, "replace embeddings already in --output_dir")

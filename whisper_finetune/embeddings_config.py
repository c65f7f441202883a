"""The options of extract_embeddings.py, the names of what it extracts, and the checks of both.

Declared apart from :mod:`whisper_finetune.embeddings` (torch, transformers, datasets): ``-h``, a mistyped
flag and a bad value answer before those imports.
"""
import os
import re
from dataclasses import dataclass
from typing import Optional, Tuple

from .data.schema import AUDIO_COLUMN, check_dataset_folder
from .errors import OptionError, UserError
from .model.sources import resolve_model
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


MANIFEST = "manifest.json"  # in the output folder: what was extracted, from what, how
_NAME = re.compile(r"^\s*([a-z_]+)\s*(?:\[\s*([+-]?\d+)\s*\])?\s*$")  # a source, optionally [index]


@dataclass(frozen=True)
class EmbeddingTarget:
    """One requested embedding: ``source`` (one of :data:`EMBEDDING_SOURCES`) and, for the
    ``*_hidden_states`` lists, ``index`` made non-negative against the model's layer count."""

    request: str
    source: str
    index: Optional[int] = None

    @property
    def name(self):
        """The canonical name, also the file stem: ``encoder_hidden_states_5``, ``last_hidden_state``."""
        return self.source if self.index is None else f"{self.source}_{self.index}"

    @property
    def side(self):
        """``encoder`` or ``decoder``."""
        return "encoder" if self.source.startswith("encoder") else "decoder"

    def meaning(self, layers):
        """What the tensor is, in words, for a side with ``layers`` layers."""
        last = f"output of {self.side} layer {layers} (the last) after the final layer norm"
        if self.index is None:
            return last
        if self.index == 0:
            stem = "convolutions" if self.side == "encoder" else "tokens"
            return f"input to {self.side} layer 1 (embeddings: {stem} + positions)"
        if self.index == layers:
            return f"{last} (equals {ENCODER_LAST if self.side == 'encoder' else DECODER_LAST})"
        return f"output of {self.side} layer {self.index}"


def valid_names(encoder_layers=None, decoder_layers=None):
    def states(source, layers):
        return f"{source}[i] (i from {-(layers + 1)} to {layers})" if layers is not None else f"{source}[i]"
    return (f"{ENCODER_LAST}, {states(ENCODER_STATES, encoder_layers)}, {DECODER_LAST}, "
            f"{states(DECODER_STATES, decoder_layers)}")


def parse_embedding_name(request, encoder_layers=None, decoder_layers=None):
    """Parse ``encoder_hidden_states[-2]``-style names into an :class:`EmbeddingTarget`.

    With the layer counts given, indices are range-checked (``-(L+1) .. L``) and made non-negative;
    without them only the syntax is checked. Errors list every valid name (and range).
    """
    match = _NAME.match(str(request))
    source, raw = (match.group(1), match.group(2)) if match else (None, None)
    if source not in EMBEDDING_SOURCES:
        raise UserError(f"--embeddings {request!r}: unknown embedding; valid names: "
                        f"{valid_names(encoder_layers, decoder_layers)}")
    listed = source in (ENCODER_STATES, DECODER_STATES)
    if listed and raw is None:
        raise UserError(f"--embeddings {request!r}: {source} needs a layer index, e.g. {source}[-1]; valid names: "
                        f"{valid_names(encoder_layers, decoder_layers)}")
    if not listed and raw is not None:
        raise UserError(f"--embeddings {request!r}: {source} takes no index; valid names: "
                        f"{valid_names(encoder_layers, decoder_layers)}")
    if raw is None:
        return EmbeddingTarget(str(request), source)
    index = int(raw)
    layers = encoder_layers if source == ENCODER_STATES else decoder_layers
    if layers is not None:
        if not -(layers + 1) <= index <= layers:
            raise UserError(f"--embeddings {request!r}: index {index} out of range; this model has {layers} "
                            f"{source.split('_')[0]} layers, so {source} has {layers + 1} entries: use i from "
                            f"{-(layers + 1)} to {layers}. Valid names: {valid_names(encoder_layers, decoder_layers)}")
        index %= layers + 1
    return EmbeddingTarget(str(request), source, index)


def resolve_targets(requests, encoder_layers, decoder_layers):
    """Parse and range-check every requested name; repeats of the same tensor are kept once."""
    targets = {}
    for request in requests:
        target = parse_embedding_name(request, encoder_layers, decoder_layers)
        targets.setdefault(target.name, target)
    return list(targets.values())


def validate_config(config: EmbeddingConfig):
    """Check the options, the inputs' and the model's paths: what needs neither the libraries nor the model's or
    the data's contents; raises :class:`UserError` naming the flag. Cheap: extract_embeddings.py runs it before
    importing torch, :func:`.embeddings.extract_embeddings` again."""
    inputs = [bool(config.audio_paths), bool(config.eval_datasets), bool(config.dataset)]
    if sum(inputs) != 1:
        raise UserError("give exactly one input: --path_to_audio FILE..., --eval_datasets FOLDER... (data_prep "
                        "output) or --dataset NAME (Hugging Face, with --config/--split)")
    for path in config.audio_paths:
        if not os.path.isfile(path):
            raise OptionError("path_to_audio", path, "no such file")
    for path in config.eval_datasets:
        check_dataset_folder(path)
    if config.pool not in POOLING:
        raise OptionError("pool", config.pool, f"choose one of {', '.join(POOLING)}")
    if config.decoder_prompt not in DECODER_PROMPTS:
        raise OptionError("decoder_prompt", config.decoder_prompt, f"choose one of {', '.join(DECODER_PROMPTS)}")
    if config.task not in ("transcribe", "translate"):
        raise OptionError("task", config.task, "choose one of transcribe, translate")
    if config.language and config.decoder_prompt != "forced":
        raise UserError("--language only sets the forced decoder prompt: add --decoder_prompt forced")
    if config.batch_size < 1:
        raise OptionError("batch_size", config.batch_size, "must be at least 1")
    if not config.embeddings:
        raise UserError(f"--embeddings: name at least one of {valid_names()}")
    for name in config.embeddings:
        parse_embedding_name(name)
    manifest = os.path.join(config.output_dir, MANIFEST)
    if os.path.exists(config.output_dir) and not os.path.isdir(config.output_dir):
        raise OptionError("output_dir", config.output_dir, "exists and is not a folder")
    if os.path.exists(manifest) and not config.overwrite:
        raise UserError(f"--output_dir {config.output_dir} already holds embeddings ({MANIFEST}); pass --overwrite "
                        f"to replace them")
    resolve_model(config.model, "model")

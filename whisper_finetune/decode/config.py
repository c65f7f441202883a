"""The options of the scripts that transcribe: transcribe_audio.py (and its JAX twin) and demo.py, and their checks.

Declared apart from the code that runs them (:mod:`.transcription`, :mod:`whisper_finetune.demo`), which
imports torch and transformers: a script's ``-h`` and its option errors come before those imports.
"""
import os
from dataclasses import dataclass
from typing import Optional

from ..audio import CHUNK_SECONDS
from ..errors import OptionError
from ..model.options import ModelOptions
from ..model.sources import resolve_model, resolve_model_source
from ..options import option
from .options import DecodingOptions, validate_options

OUTPUT_FORMATS = ("txt", "srt", "vtt", "json")
DEFAULT_SEARCH_SECONDS = 8.0  # where, before the end of each 30 s window, a cut may go


@dataclass(frozen=True, kw_only=True)
class TranscribeConfig(ModelOptions):
    """Options of :func:`.transcription.transcribe`: the model options plus one field per transcribe_audio.py flag."""

    path_to_audio: str = option(help="audio file (wav, flac, ogg, mp3; any rate, mono or stereo, any length)")
    output: Optional[str] = option(None, "also write the transcript to this file: .txt, .srt, .vtt or .json "
                                   "(segments with start/end seconds)")
    search_seconds: float = option(DEFAULT_SEARCH_SECONDS, "cut-at-silence: long audio is cut into pieces of at most "
                                   "30 s, each cut at the quietest moment within the last this many seconds of its "
                                   "window (more than 0, at most 15)")
    timestamps: bool = option(False, "decode long audio sequentially on the timestamps Whisper predicts "
                              "(transformers' long-form generate; --backend pytorch): one cue per spoken segment in "
                              ".srt/.vtt/.json instead of one per 30 s piece. A model that cannot predict timestamps "
                              "(fine-tuned on <|notimestamps|> only) keeps cutting at silence, with a log line")
    word_timestamps: bool = option(False, "with --timestamps True: each segment of the .json output also lists its "
                                   "words with start/end seconds (cross-attention alignment of the tokens to the "
                                   "audio)")
    vad: bool = option(False, "remove non-speech with Silero VAD before decoding (silences of 1 s or more are "
                       "shortened to 0.4 s; music and noise go), then map every time back to the original audio; "
                       "audio without speech gives an empty transcript. Any backend, either segmentation")
    decoding: DecodingOptions = DecodingOptions()


@dataclass(frozen=True, kw_only=True)
class DemoConfig(ModelOptions):
    """Options of :func:`whisper_finetune.demo.serve`: the model options plus one field per demo.py flag."""

    compare_model: Optional[str] = option(None, "a second model (local folder or Hub id) transcribed side by side "
                                          "with the first, e.g. the stock model against your fine-tune",
                                          group="model")
    server_name: str = option("127.0.0.1", "address to serve the page on; 127.0.0.1 keeps it on this machine, "
                              "0.0.0.0 opens it to the network")
    server_port: Optional[int] = option(None, "port to serve on (None: the first free one from 7860)")
    share: bool = option(False, "also publish the page through a temporary public gradio.live link (needs "
                         "internet; off unless asked)")
    search_seconds: float = option(DEFAULT_SEARCH_SECONDS, "audio longer than 30 s is cut at the quietest moment "
                                   "within the last this many seconds of each 30 s window")
    decoding: DecodingOptions = DecodingOptions()


def check_search_seconds(search_seconds):
    """Raise :class:`OptionError` unless ``0 < search_seconds <= 15`` (half of Whisper's window)."""
    if not 0 < search_seconds <= CHUNK_SECONDS / 2:
        raise OptionError("search_seconds", search_seconds, f"must be more than 0 and at most {CHUNK_SECONDS / 2:g}")


def output_format(path):
    """The format named by ``path``'s extension; errors list the accepted ones."""
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in OUTPUT_FORMATS:
        raise OptionError("output", path, f"unknown extension; use one of {', '.join('.' + f for f in OUTPUT_FORMATS)}")
    return fmt


def check_values(config: TranscribeConfig):
    """Refuse, with one line, what no transcription could use, a missing audio file or model folder included: the
    checks that need neither the libraries, the model's weights nor the audio's samples. Cheap: the scripts run it
    before importing torch, :func:`.transcription.transcribe` again."""
    if config.output:
        output_format(config.output)
    if not os.path.isfile(config.path_to_audio):
        raise OptionError("path_to_audio", config.path_to_audio, "no such file")
    check_search_seconds(config.search_seconds)
    backend = config.decoding.backend
    if config.timestamps and backend != "pytorch":
        raise OptionError("timestamps", True, f"only --backend pytorch decodes long-form on timestamps "
                          f"(transformers' generate); with --backend {backend} leave it False: long audio is then "
                          f"cut at silence")
    if config.word_timestamps and not config.timestamps:
        raise OptionError("word_timestamps", True, "needs --timestamps True (word times come from the decoding on "
                          "timestamps)")
    validate_options(config.decoding, long_form=config.timestamps)
    resolve_model_source(config.is_public_repo, config.hf_model, config.ckpt_dir, config.temp_ckpt_folder)


def check_demo_values(config: DemoConfig):
    """:func:`check_values` for demo.py: the port, the cut search, the decoding options and both models' paths."""
    if config.server_port is not None and not 0 < config.server_port < 65536:
        raise OptionError("server_port", config.server_port, "must be between 1 and 65535")
    check_search_seconds(config.search_seconds)
    validate_options(config.decoding)
    resolve_model_source(config.is_public_repo, config.hf_model, config.ckpt_dir, config.temp_ckpt_folder)
    if config.compare_model:
        resolve_model(config.compare_model, "compare_model")

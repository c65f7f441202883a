"""Backend-agnostic evaluation: load datasets, featurise in DataLoader workers, decode length-sorted
batches with any :class:`~whisper_finetune.decode.options.Decoder`, score and write result files.

The PyTorch, CTranslate2 and JAX evaluators (HF or custom data) all run :func:`evaluate`; they
differ only in their :class:`EvalConfig`.
"""
import io
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from ..model import loading
from .. import scoring
from ..audio import SAMPLE_RATE, decode_example_audio
from ..data.loading import (AUDIO_COLUMN, DURATION_COLUMN, ID_COLUMN, TEXT_COLUMN, DatasetSpec, load_datasets,
                            source_format)
from ..decode.options import DecodingOptions, validate_options
from ..decode.backends import make_decoder
from ..errors import OptionError, UserError
from ..model.loading import ModelOptions
from ..options import option
from ..text import METRICS, NORMALIZERS, choose_metric, choose_normalizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EvalConfig(ModelOptions):
    """Everything an evaluator script passes to :func:`evaluate`: the model options plus one field per
    data, scoring and decoding flag."""

    output_dir: str = option(help="folder for the result files (one .txt and one .json per dataset)",
                             group="data and results")
    eval_datasets: Tuple[str, ...] = option((), "one or more data_prep output folders (custom_data/data_prep.py)",
                                            group="data and results")
    dataset: Optional[str] = option(None, "Hub dataset id (google/fleurs) or a local dataset folder (save_to_disk "
                                    "output or a folder load_dataset reads)", group="data and results")
    config: Optional[str] = option(None, "dataset configuration, e.g. gu_in", group="data and results")
    split: str = option("test", "dataset split", group="data and results")
    text_column: Optional[str] = option(None, "column holding the transcription", group="data and results",
                                        default_text="the first of sentence, text, transcription, transcript, ...")
    audio_column: str = option(AUDIO_COLUMN, "column holding the audio", group="data and results")
    normalizer: Optional[str] = option(None, "text normaliser for WER/CER (indic: the former name of unicode)",
                                       choices=NORMALIZERS, group="data and results",
                                       default_text="english for English and .en models, unicode otherwise")
    primary_metric: Optional[str] = option(None, "the metric reported first and meant to be read", choices=METRICS,
                                           group="data and results",
                                           default_text="cer for zh, ja, th, lo, my, yue, km, bo (no spaces "
                                                        "between words), wer otherwise")
    max_samples: Optional[int] = option(None, "evaluate only the first N utterances of each dataset (quick runs)",
                                        group="data and results", default_text="all")
    num_workers: int = option(2, "DataLoader workers decoding and featurising audio while the model runs (0: in the "
                              "main process)", group="data and results")
    decoding: DecodingOptions = DecodingOptions()
    custom: bool = option(False, "data_prep folders (eval_datasets) or a Hugging Face dataset (dataset)", cli=False)
    result_marker: Optional[str] = option(None, "added to result file names, e.g. jax", cli=False)

    def dataset_specs(self):
        """The datasets to evaluate, as :class:`DatasetSpec`."""
        if self.custom:
            return tuple(DatasetSpec(name=path, split=None) for path in self.eval_datasets)
        if self.dataset is None:
            return ()
        return (DatasetSpec(name=self.dataset, config=self.config, split=self.split, text_column=self.text_column,
                            audio_column=self.audio_column),)


@dataclass
class EvalResult:
    """One model on one dataset: what was run and how it scored (the result JSON file's content)."""

    model: str
    processor: str
    dataset: str
    language: Optional[str]
    task: str
    decoder_prompt: Optional[str]
    decoding: dict
    device: str
    audio_hours: float
    wall_seconds: float
    rtfx: float
    utterances_per_second: float
    model_load_seconds: float
    compile_seconds: float
    primary_metric: str  # "cer" for languages written without spaces between words, else "wer"
    score: float  # the primary metric's value
    wer: float
    cer: float
    substitutions: int
    deletions: int
    insertions: int
    hits: int
    raw_wer: float
    raw_cer: float
    normalizer: str
    utterances: int
    scored_utterances: int
    empty_references: int
    reference_words: int
    txt_path: str
    json_path: str
    source_format: Optional[str] = None  # the corpus format of a data_prep folder (kaldi, common_voice...)

    def to_dict(self):
        return asdict(self)


def audio_durations(dataset):
    """Seconds of audio per row: the ``duration`` column when present, else read from the audio headers."""
    if DURATION_COLUMN in dataset.column_names:
        return np.asarray(dataset[DURATION_COLUMN], dtype=np.float64)
    durations = []
    for value in dataset[AUDIO_COLUMN]:
        if isinstance(value, dict) and value.get("array") is not None:
            durations.append(len(value["array"]) / value["sampling_rate"])
            continue
        source = io.BytesIO(value["bytes"]) if isinstance(value, dict) and value.get("bytes") else \
            (value["path"] if isinstance(value, dict) else value)
        try:
            info = sf.info(source)
        except Exception as exc:  # libsndfile raises several types
            raise UserError(f"cannot read audio {value.get('path') if isinstance(value, dict) else value}: {exc}") from exc
        durations.append(info.frames / info.samplerate)
    return np.asarray(durations, dtype=np.float64)


def length_sorted_batches(durations, batch_size):
    """Indices grouped into batches, longest first (padding waste is small and OOM shows up at once)."""
    order = np.argsort(-np.asarray(durations), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


class _Featurizer(torch.utils.data.Dataset):
    """Decodes and featurises one batch per item, so DataLoader workers overlap audio work with decoding."""

    def __init__(self, dataset, batches, feature_extractor, context_frames=None):
        self.dataset, self.batches, self.feature_extractor = dataset, batches, feature_extractor
        self.context_frames = context_frames  # seconds -> log-mel frames (dynamic audio context), or None

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        rows = self.dataset[self.batches[index]]
        audio = [decode_example_audio(value, SAMPLE_RATE) for value in rows[AUDIO_COLUMN]]
        features = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        if self.context_frames:
            features = features[:, :, :self.context_frames(max(len(a) for a in audio) / SAMPLE_RATE)]
        return self.batches[index], features.astype(np.float32)  # (B, n_mels, 3000 or the batch's bucket)


def _as_is(item):
    """Keep the worker's numpy batch as it is (the default would convert it to a torch tensor)."""
    return item


def decode_dataset(dataset, decoder, feature_extractor, batch_size, num_workers=0, description="decoding",
                   context_frames=None):
    """Decode every row of a standardised dataset; returns hypotheses in dataset order and the wall time."""
    durations = audio_durations(dataset)
    batches = length_sorted_batches(durations, batch_size)
    # Once JAX runs in this process (a JAX decoder, or one loaded earlier by the same program) it is
    # multithreaded, and forking it can deadlock: workers then start from a fresh forkserver process.
    fork_unsafe = not getattr(decoder, "fork_safe", True) or "jax" in sys.modules
    context = "forkserver" if num_workers and fork_unsafe else None
    loader = torch.utils.data.DataLoader(_Featurizer(dataset, batches, feature_extractor, context_frames),
                                         batch_size=None,
                                         shuffle=False, num_workers=num_workers, collate_fn=_as_is,
                                         prefetch_factor=2 if num_workers else None, multiprocessing_context=context)
    hypotheses = [None] * len(dataset)
    start = time.perf_counter()
    with tqdm(total=len(dataset), desc=description, unit="utt", dynamic_ncols=True) as bar:
        for indices, features in loader:
            for index, text in zip(indices, decoder.decode(features)):
                hypotheses[index] = text
            bar.update(len(indices))
    return hypotheses, time.perf_counter() - start, float(durations.sum())


def _load_all(config: EvalConfig):
    """Load and check every dataset before any decoding, so a bad one leaves no partial results."""
    loaded = []
    specs = config.dataset_specs()
    for spec, dataset in zip(specs, load_datasets(specs, custom=config.custom)):
        if config.max_samples is not None:
            dataset = dataset.select(range(min(config.max_samples, len(dataset))))
        if len(dataset) == 0:
            raise UserError(f"{spec.label}: the dataset is empty (no utterances to evaluate)")
        loaded.append((spec, dataset))
    return loaded


def result_names(specs):
    """Dataset names for result files: local folders by their base name (the full path when two
    datasets of one run share a base name), Hub datasets by id; then config and split."""
    def name(spec, full):
        base = spec.name if full or not os.path.exists(spec.name) else os.path.basename(os.path.normpath(spec.name))
        return "/".join([base] + [p for p in (spec.config, spec.split) if p])

    short = [name(spec, False) for spec in specs]
    return short if len(set(short)) == len(short) else [name(spec, True) for spec in specs]


def evaluate(config: EvalConfig) -> list:
    """Evaluate one model on each dataset; writes ``<model>__<dataset>[__marker].txt/.json`` per dataset.

    Returns one :class:`EvalResult` per dataset.
    """
    if not config.dataset_specs():
        raise UserError("--eval_datasets: give at least one dataset" if config.custom else "--dataset: give a dataset")
    if config.max_samples is not None and config.max_samples < 1:
        raise OptionError("max_samples", config.max_samples, "must be at least 1")
    if config.num_workers < 0:
        raise OptionError("num_workers", config.num_workers, "must be 0 or more")
    device = loading.decoding_device(config.device, config.decoding.backend)
    validate_options(config.decoding)
    prepared = loading.prepare_model(config, config.decoding)
    normalizer = choose_normalizer(prepared.options.language, config.normalizer, prepared.english_only)
    metric = choose_metric(prepared.options.language, config.primary_metric)
    loaded = _load_all(config)
    options = prepared.options
    start = time.perf_counter()
    decoder = make_decoder(prepared, device)
    load_seconds = time.perf_counter() - start
    marker = config.result_marker or (None if options.backend == "pytorch" else f"{options.backend}-{options.compute_type}")
    results = []
    for (spec, dataset), name in zip(loaded, result_names([spec for spec, _ in loaded])):
        hypotheses, wall, audio_seconds = decode_dataset(
            dataset, decoder, prepared.processor.feature_extractor, options.batch_size, config.num_workers,
            spec.label, options.context_frames)
        references = list(dataset[TEXT_COLUMN])
        scores = scoring.score(references, hypotheses, normalizer, metric)
        origin = source_format(spec.name)  # the corpus format of a data_prep folder; None for other datasets
        metadata = {
            "model": prepared.source.model_path, "processor": prepared.source.processor_path, "dataset": spec.label,
            **({"source_format": origin} if origin else {}),
            "language": options.language, "task": options.task,
            "decoder_prompt": prepared.prompt_text,
            "decoding": asdict(options), "device": str(device),
            "audio_hours": round(audio_seconds / 3600, 6), "wall_seconds": round(wall, 3),
            "rtfx": round(audio_seconds / wall, 3), "utterances_per_second": round(len(dataset) / wall, 3),
            "model_load_seconds": round(load_seconds, 3), "compile_seconds": round(decoder.compile_seconds, 3),
        }
        stem = scoring.result_stem(prepared.source.name, name, marker)
        txt_path, json_path = scoring.write_results(config.output_dir, stem, list(dataset[ID_COLUMN]), references,
                                                    hypotheses, scores, metadata)
        logger.info("%s: %s %.4f (normalizer %s), RTFx %.2f -> %s", spec.label, metric.upper(), scores["score"],
                    normalizer, metadata["rtfx"], txt_path)
        figures = {k: v for k, v in scores.items() if k not in ("normalized_references", "normalized_hypotheses",
                                                                  "scored")}
        results.append(EvalResult(**metadata, **figures, txt_path=txt_path, json_path=json_path))

    # The report page beside the result files (issue 22; whisper_finetune/evaluate/report.py).
    from .report import write_report
    write_report([r.json_path for r in results], os.path.join(config.output_dir, "report.html"))
    return results

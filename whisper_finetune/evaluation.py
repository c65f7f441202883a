"""Backend-agnostic evaluation: load datasets, featurise in DataLoader workers, decode length-sorted
batches with any :class:`~whisper_finetune.decoding.Decoder`, score and write result files.

The PyTorch, CTranslate2 and JAX evaluators (HF or custom data) all run :func:`evaluate`; they
differ only in their :class:`EvalConfig`.
"""
import io
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional, Tuple, Union

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from . import modeling, scoring
from .audio import SAMPLE_RATE, decode_example_audio
from .data import AUDIO_COLUMN, DURATION_COLUMN, ID_COLUMN, TEXT_COLUMN, DatasetSpec, load_datasets
from .decoding import DecodingOptions, make_decoder, prompt_text, validate_options
from .errors import UserError
from .text import choose_normalizer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """Everything an evaluator script passes to :func:`evaluate` (one field per flag)."""

    datasets: Tuple[DatasetSpec, ...]
    output_dir: str
    is_public_repo: bool = True
    hf_model: Optional[str] = None
    ckpt_dir: Optional[str] = None
    temp_ckpt_folder: Optional[str] = None
    custom: bool = False  # data_prep folders (True) or Hugging Face datasets (False)
    language: Optional[str] = None  # as given (name or code); resolved against the model in evaluate()
    normalizer: Optional[str] = None  # None: chosen by language (english / indic)
    max_samples: Optional[int] = None
    device: Union[int, str] = -1  # -1 CPU, N GPU N ("all": every accelerator, JAX only)
    num_workers: int = 2
    decoding: DecodingOptions = DecodingOptions()
    result_marker: Optional[str] = None  # added to result file names, e.g. "jax"


def torch_or_jax_device(device, backend):
    """The ``--device`` value for ``backend``: a ``torch.device`` for pytorch/ctranslate2, unchanged for JAX."""
    if backend == "jax":
        return device
    if str(device).strip().lower() == "all":
        raise UserError(f"--device all is only for --backend jax; with {backend} use -1 (CPU) or a GPU number")
    return modeling.torch_device(device)


def generation_config_of(model_path):
    """The model's ``GenerationConfig`` (from a LoRA adapter's base when the adapter folder has none)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path)
    except OSError:
        base = modeling._adapter_base(model_path) if os.path.isdir(model_path) else None
        if base:
            return GenerationConfig.from_pretrained(base)
        raise UserError(f"cannot read a generation config from {model_path}")


@dataclass(frozen=True)
class PreparedModel:
    """A model source with its processor and the decoding options resolved against it."""

    source: modeling.ModelSource
    processor: object
    options: DecodingOptions
    english_only: bool


def prepare_model(is_public_repo, hf_model, ckpt_dir, temp_ckpt_folder, language, options: DecodingOptions):
    """Check the model flags, load the processor and resolve ``language`` for this model (no weights loaded)."""
    validate_options(options)
    source = modeling.resolve_model_source(is_public_repo, hf_model, ckpt_dir, temp_ckpt_folder)
    processor = modeling.load_processor(source.processor_path)
    generation_config = generation_config_of(source.model_path)
    code = modeling.resolve_language(language, generation_config, options.task)
    return PreparedModel(source, processor, replace(options, language=code),
                         modeling.is_english_only(generation_config))


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

    def __init__(self, dataset, batches, feature_extractor):
        self.dataset, self.batches, self.feature_extractor = dataset, batches, feature_extractor

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        rows = self.dataset[self.batches[index]]
        audio = [decode_example_audio(value, SAMPLE_RATE) for value in rows[AUDIO_COLUMN]]
        features = self.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        return self.batches[index], features.astype(np.float32)  # (B, n_mels, 3000)


def _as_is(item):
    """Keep the worker's numpy batch as it is (the default would convert it to a torch tensor)."""
    return item


def decode_dataset(dataset, decoder, feature_extractor, batch_size, num_workers=0, description="decoding"):
    """Decode every row of a standardised dataset; returns hypotheses in dataset order and the wall time."""
    durations = audio_durations(dataset)
    batches = length_sorted_batches(durations, batch_size)
    loader = torch.utils.data.DataLoader(_Featurizer(dataset, batches, feature_extractor), batch_size=None,
                                         shuffle=False, num_workers=num_workers, collate_fn=_as_is,
                                         prefetch_factor=2 if num_workers else None)
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
    for spec, dataset in zip(config.datasets, load_datasets(config.datasets, custom=config.custom)):
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

    Returns one result dict per dataset (the JSON file's content plus ``txt_path``/``json_path``).
    """
    if not config.datasets:
        raise UserError("no dataset to evaluate")
    if config.max_samples is not None and config.max_samples < 1:
        raise UserError(f"--max_samples {config.max_samples}: must be at least 1")
    if config.num_workers < 0:
        raise UserError(f"--num_workers {config.num_workers}: must be 0 or more")
    device = torch_or_jax_device(config.device, config.decoding.backend)
    prepared = prepare_model(config.is_public_repo, config.hf_model, config.ckpt_dir, config.temp_ckpt_folder,
                             config.language, config.decoding)
    normalizer = choose_normalizer(prepared.options.language, config.normalizer, prepared.english_only)
    loaded = _load_all(config)
    options = prepared.options
    start = time.perf_counter()
    decoder = make_decoder(options.backend, prepared.source.model_path, prepared.processor, options, device)
    load_seconds = time.perf_counter() - start
    marker = config.result_marker or (None if options.backend == "pytorch" else f"{options.backend}-{options.compute_type}")
    results = []
    for (spec, dataset), name in zip(loaded, result_names([spec for spec, _ in loaded])):
        hypotheses, wall, audio_seconds = decode_dataset(dataset, decoder, prepared.processor.feature_extractor,
                                                         options.batch_size, config.num_workers, spec.label)
        references = list(dataset[TEXT_COLUMN])
        scores = scoring.score(references, hypotheses, normalizer)
        metadata = {
            "model": prepared.source.model_path, "processor": prepared.source.processor_path, "dataset": spec.label,
            "language": options.language, "task": options.task,
            "decoder_prompt": _prompt_of(decoder, prepared.processor),
            "decoding": asdict(options), "device": str(device),
            "audio_hours": round(audio_seconds / 3600, 6), "wall_seconds": round(wall, 3),
            "rtfx": round(audio_seconds / wall, 3), "utterances_per_second": round(len(dataset) / wall, 3),
            "model_load_seconds": round(load_seconds, 3), "compile_seconds": round(decoder.compile_seconds, 3),
        }
        stem = scoring.result_stem(prepared.source.name, name, marker)
        txt_path, json_path = scoring.write_results(config.output_dir, stem, list(dataset[ID_COLUMN]), references,
                                                    hypotheses, scores, metadata)
        logger.info("%s: WER %.4f (normalizer %s), RTFx %.2f -> %s", spec.label, scores["wer"], normalizer,
                    metadata["rtfx"], txt_path)
        figures = {k: v for k, v in scores.items() if k not in ("normalized_references", "normalized_hypotheses",
                                                                  "scored")}
        results.append({**metadata, **figures, "txt_path": txt_path, "json_path": json_path})
    return results


def _prompt_of(decoder, processor):
    """The decoder prompt as text, for result files (``None`` for a backend that does not expose it)."""
    ids = getattr(decoder, "prompt_ids", None)
    return prompt_text(processor, ids) if ids is not None else None

"""The data of each role of a training run: train (with replay mixed in), eval and retain sets, or a stream.

Datasets are loaded, shuffled, cut, featurised once (cached in ``output_dir/.feature_cache`` under a key
of everything that changes the features) and filtered; a streamed training set is featurised on the fly.
"""
import dataclasses
import hashlib
import json
import logging
import math
import os

from ..data.bad_audio import BadAudioLog, drop_bad
from ..data.features import (INDEX_COLUMN, LENGTH_COLUMN, REPLAY_COLUMN, LanguageLabels, drop_too_long, featurize,
                             featurize_stream, featurize_windows)
from ..data.loading import load_datasets
from ..data.schema import ID_COLUMN, LANGUAGE_COLUMN
from ..errors import UserError
from ..text import language_code
from .checks import dataset_specs

logger = logging.getLogger(__name__)

LABELS_FORMAT = "per-example language"  # in the feature cache's key: what the labels hold (see cache_path)


def mix_replay(config, train_set, processor, specs=None):
    """``(training set with replay examples added, counts, the replay rows)``: ``replay_ratio`` of the result
    comes from the replay sets (``specs``; by default the --replay_datasets); the replay rows are the featurised
    replay examples, each once (what ``--ewc_weight`` estimates its Fisher on).

    The replay sets are shuffled and cut to the number needed, ``ratio / (1 - ratio)`` times the training
    set (repeated when too small), featurised like the training set, each example with its own language
    token, and concatenated to it. The Trainer's sampler shuffles the whole set every epoch, so every
    batch draws from both at that ratio (on average). Concatenating, rather than a sampler of its own,
    keeps everything the Trainer does with one dataset (exact resumption, length grouping, sharding
    between processes) and the feature cache; the cost is that the replay examples are drawn once per
    run (by --seed), so a replay set larger than needed is only partly used.
    """
    from datasets import concatenate_datasets

    needed = max(1, round(len(train_set) * config.replay_ratio / (1 - config.replay_ratio)))
    replay_language = language_code(config.replay_language)
    specs = dataset_specs(config, "replay") if specs is None else specs
    replay, counts = prepare_split(config, "replay", specs, needed, processor, replay_language)
    rows = replay
    copies = math.ceil(needed / len(replay))
    if copies > 1:
        logger.info("replay data: %d example(s) for the %d needed: each is used %d times at most", len(replay),
                    needed, copies)
        replay = concatenate_datasets([replay] * copies)
    replay = replay.select(range(needed))
    counts.update(mixed_in=needed, repeated=copies > 1)
    logger.info("replay: %d example(s) mixed into %d training example(s) (ratio %g)", needed, len(train_set),
                config.replay_ratio)
    if config.distill_weight and config.distill_rows == "replay":  # the distillation term needs to tell them apart
        train_set = train_set.add_column(REPLAY_COLUMN, [0] * len(train_set))
        replay = replay.add_column(REPLAY_COLUMN, [1] * len(replay))
    return concatenate_datasets([train_set, replay]).with_format("numpy"), counts, rows.with_format("numpy")


def on_the_fly_features(config, processor):
    """With --augment, what the collator featurises training rows with (fresh augmentation each epoch);
    without it ``None``, and no augmentation object is made (features were computed once)."""
    if not config.augment:
        return None
    from ..data.augment import OnTheFlyFeatures, WaveformAugmenter, describe

    augmenter = WaveformAugmenter(config.sampling_rate, tuple(config.augment_snr_db), config.noise_dir,
                                  config.augment_pitch_semitones)
    logger.info("augmenting the training audio each epoch: %s",
                describe(config.augment_snr_db, config.noise_dir, config.augment_pitch_semitones))
    return OnTheFlyFeatures(processor.feature_extractor, augmenter, config.sampling_rate, config.seed)


def numbered(dataset):
    """``dataset`` with each row's number (``example_index``), which seeds its augmentation (--augment)."""
    return dataset.add_column(INDEX_COLUMN, list(range(len(dataset)))).with_format("numpy")


def cache_path(config, role, specs, max_samples, processor_name):
    """A feature-cache file named by everything that changes its content (shared by all ranks)."""
    windows = role == "train" and config.timestamps
    key = json.dumps([role, [dataclasses.asdict(s) for s in specs], config.sampling_rate, max_samples, config.seed,
                      config.lowercase, config.remove_punctuation, processor_name, config.language, config.task,
                      *([config.timestamp_ratio] if windows else []),
                      *([config.retain_language] if role == "retain" else []),  # the retain labels' language
                      *([config.replay_language] if role == "replay" else []),  # replay rows' default language
                      # Rows that keep their audio for augmentation (--augment) instead of features; and the
                      # labels' format: each row's own language token (caches written before it had none).
                      keeps_audio(config, role), LABELS_FORMAT,
                      [os.path.abspath(s.name) if os.path.exists(s.name) else s.name for s in specs]], sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(config.output_dir, ".feature_cache", f"{role}-{digest}.arrow")


def keeps_audio(config, role):
    """Whether ``role``'s rows keep their decoded audio, featurised per batch after augmentation (--augment)."""
    return config.augment and role in ("train", "replay")


def concatenated(parts):
    """``parts`` as one dataset; when only some have a language column, the others get an empty one (their
    rows take the default language), as concatenation needs the same columns."""
    from datasets import Value, concatenate_datasets

    if any(LANGUAGE_COLUMN in part.column_names for part in parts):
        parts = [part.add_column(LANGUAGE_COLUMN, [None] * len(part), feature=Value("string"))
                 if LANGUAGE_COLUMN not in part.column_names else
                 part if part.features[LANGUAGE_COLUMN] == Value("string") else
                 part.cast_column(LANGUAGE_COLUMN, Value("string")) for part in parts]
    return concatenate_datasets(parts) if len(parts) > 1 else parts[0]


def prepare_split(config, role, specs, max_samples, processor, default_language=None):
    """Load, shuffle, cut to ``max_samples``, featurise (cached) and filter one role's datasets; returns
    ``(dataset, counts)``. Rows with a ``language`` are labelled with their own language token, the
    others with ``default_language`` (``None``: the tokenizer's, i.e. the run's --language)."""
    windows = role == "train" and config.timestamps  # evaluation stays <|notimestamps|>: comparable WER
    parts = load_datasets(specs, custom=config.custom, num_proc=config.num_proc, keep_segments=windows)
    dataset = concatenated(parts)
    dataset = dataset.shuffle(seed=config.seed)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    label = f"{role} data ({', '.join(s.label for s in specs)})"
    if role not in ("train", "replay") and LANGUAGE_COLUMN in dataset.column_names:
        # Evaluation labels keep the tokenizer's language: they only give the loss (sets are decoded in one
        # language), and an evaluation set's own names need not be Whisper's (FLEURS: "Mandarin Chinese").
        dataset = dataset.remove_columns(LANGUAGE_COLUMN)
    languages = LanguageLabels(processor.tokenizer, default_language, label)
    values = dataset[LANGUAGE_COLUMN] if LANGUAGE_COLUMN in dataset.column_names else [None]
    languages.check(values)  # before featurising: an unknown or (English-only model) non-English language
    if role == "replay" and languages.default is None and not languages.english_only and None in values:
        raise UserError(f"{label}: examples without a language column; give --replay_language, the language of "
                        f"the replay speech (e.g. en)")
    cache = cache_path(config, role, specs, max_samples, config.model_name)
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    if windows:
        dataset, window_counts = featurize_windows(
            dataset, processor, config.sampling_rate, config.timestamp_ratio, config.lowercase,
            config.remove_punctuation, cache_file_name=cache, fingerprint=os.path.basename(cache)[:-len(".arrow")],
            desc=f"featurising {role} windows", languages=languages)
        skipped = 0  # timestamp windows hold several clips: a bad one stops the run (--max_bad_examples aside)
    else:
        keep_audio = keeps_audio(config, role)
        names = dataset[ID_COLUMN]
        dataset = featurize(dataset, processor, config.sampling_rate, config.num_proc, config.lowercase,
                            config.remove_punctuation, cache_file_name=cache,
                            desc=f"{'decoding' if keep_audio else 'featurising'} {role} data", languages=languages,
                            keep_audio=keep_audio, max_bad=config.max_bad_examples,
                            bad_log=BadAudioLog(config.output_dir, role))
        dataset, skipped = drop_bad(dataset, names, LENGTH_COLUMN, config.max_bad_examples, label)
    dataset, counts = drop_too_long(dataset, label)
    if skipped:
        counts["skipped_bad_audio"] = skipped
    if windows:
        counts.update(window_counts)
    if len(dataset) == 0:
        raise UserError(f"{label}: no utterance left after dropping clips over 30 s and labels over 448 tokens")
    return dataset.with_format("numpy"), counts


def known_size(stream, spec):
    """Number of examples of a streamed split when the dataset's metadata says it, else ``None``."""
    splits = getattr(stream.info, "splits", None) or {}
    split = splits.get(spec.split) if spec.split else None
    return getattr(split, "num_examples", None) or None


def prepare_stream(config, specs, processor, args):
    """The training data as a lazily read, interleaved, shuffled, featurised ``IterableDataset``.

    Under ``torchrun`` each rank keeps its own part (``split_dataset_by_node``): whole shards when
    the stream has a multiple of world-size shards, else every world-size-th example.
    """
    from datasets import interleave_datasets
    from datasets.distributed import split_dataset_by_node

    parts = load_datasets(specs, custom=False, streaming=True)
    probabilities = config.interleave_probabilities
    if probabilities is None and len(parts) > 1:
        sizes = [known_size(part, spec) for part, spec in zip(parts, specs)]
        probabilities = sizes if all(sizes) else [1.0] * len(parts)
    if len(parts) > 1:
        total = float(sum(probabilities))
        probabilities = [p / total for p in probabilities]
        logger.info("interleaving %s with probabilities %s", ", ".join(s.label for s in specs),
                    ", ".join(f"{p:.3f}" for p in probabilities))
        # all_exhausted: every dataset is read to its end once per pass (smaller ones are repeated).
        stream = interleave_datasets(parts, probabilities=probabilities, seed=config.seed,
                                     stopping_strategy="all_exhausted")
    else:
        stream = parts[0]
    stream = stream.shuffle(seed=config.seed, buffer_size=config.shuffle_buffer_size)
    if config.max_train_samples is not None:
        stream = stream.take(config.max_train_samples)
    if args.world_size > 1:
        stream = split_dataset_by_node(stream, rank=args.process_index, world_size=args.world_size)
    stream = featurize_stream(stream, processor, config.sampling_rate, config.lowercase, config.remove_punctuation,
                              max_bad=config.max_bad_examples, bad_log=BadAudioLog(config.output_dir, "train"))
    return stream.with_format("numpy"), {"streamed": True, "probabilities": probabilities}


def hours(dataset):
    return round(float(sum(dataset.with_format(None)[LENGTH_COLUMN])) / 3600, 4)

"""Replay, per-example language and augmentation in training (issue 18, items 2 and 3), on the tiny random Whisper."""
import glob
import json
import os
import re

import datasets
import numpy as np
import pytest
import torch

from conftest import run_script, write_corpus
from test_train import CUSTOM, quick_config
from whisper_finetune.data import augment
from whisper_finetune.model import loading
from whisper_finetune.train import data as train_data
from whisper_finetune.train import model_setup, run
from whisper_finetune.data.config import DataPrepConfig
from whisper_finetune.data.corpus import prepare_dataset
from whisper_finetune.data.loading import load_datasets
from whisper_finetune.data.schema import DatasetSpec
from whisper_finetune.errors import DataValidationError, UserError
from whisper_finetune.data.features import INDEX_COLUMN, SAMPLES_COLUMN, DataCollatorSpeechSeq2SeqWithPadding, featurize
from whisper_finetune.train.checks import check_config, dataset_specs as check_dataset_specs

REPLAY_SENTENCES = ["good morning to you", "thank you very much", "where is the station", "see you tomorrow"]


def prepared(tmp_path, name, n=4, sentences=REPLAY_SENTENCES, languages=None, skip_invalid=False):
    """A data_prep folder of ``n`` synthetic clips; ``languages``: lines of its ``languages`` file."""
    source = write_corpus(str(tmp_path / f"{name}-source"), n=n, sentences=sentences)
    if languages is not None:
        with open(os.path.join(source, "languages"), "w", encoding="utf-8") as f:
            f.write("\n".join(languages) + "\n")
    out = str(tmp_path / name)
    summary = prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=out, skip_invalid=skip_invalid))
    return out, summary


def tokenizer_for(model_dir, language):
    processor = loading.load_processor(model_dir)
    english_only = language is None
    model_setup.configure_tokenizer(processor.tokenizer, language, "transcribe", english_only)
    return processor


def expected_labels(tokenizer, language, sentence):
    """The labels the collator should hand the model: the start token stripped, -100 padding aside."""
    head = [f"<|{language}|>", "<|transcribe|>", "<|notimestamps|>"] if language else ["<|notimestamps|>"]
    return tokenizer.convert_tokens_to_ids(head) + tokenizer(sentence, add_special_tokens=False).input_ids + \
        [tokenizer.eos_token_id]


# --------------------------------------------------------------------------------------------- data_prep
def test_languages_file_sets_each_utterance_language(tmp_path):
    out, summary = prepared(tmp_path, "good", languages=["utt0000 hi", "utt0001 English", "utt0002 <|fr|>"])
    dataset = datasets.load_from_disk(out)
    assert dataset["language"] == ["hi", "en", "fr", None]  # codes; utt0003 unlisted: the run's --language
    assert summary.kept == 4


def test_bad_languages_lines_are_reported_naming_the_line(tmp_path):
    lines = ["utt0000 Klingon", "utt0001", "utt0002 hi", "utt0002 en", "utt0009 hi"]
    with pytest.raises(DataValidationError) as info:
        prepared(tmp_path, "bad", languages=lines)
    message = str(info.value)
    for problem in ("languages line 1: id utt0000: unknown language 'Klingon'; use a Whisper language code or name "
                    "(en, hi, Hindi...)",
                    "languages line 2: id utt0001 has no language code",
                    "languages line 4: id utt0002 repeats line 3",
                    "languages line 5: id utt0009 has no entry in text"):
        assert problem in message
    assert not os.path.exists(tmp_path / "bad")
    out, summary = prepared(tmp_path, "skipped", languages=lines, skip_invalid=True)
    dataset = datasets.load_from_disk(out)
    assert dataset["id"] == ["utt0003"] and summary.kept == 1
    assert sorted(summary.dropped) == ["duplicate id", "id missing from text", "no language", "unknown language"]


# --------------------------------------------------------------------------------------------- replay
def test_replay_mixes_two_languages_into_one_batch_with_each_rows_language_token(tiny_model_dir, tiny_dataset_dir,
                                                                                 tmp_path):
    """8 Hindi-labelled training rows + replay at ratio 0.5 = 8 replay rows drawn from a set of 4 (repeated):
    two French by the set's languages file, the others English by --replay_language."""
    replay, _ = prepared(tmp_path, "replay", languages=["utt0000 fr", "utt0001 French"])
    config = quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", replay_datasets=(replay,),
                          replay_language="English", replay_ratio=0.5)
    check_config(config)
    processor = tokenizer_for(tiny_model_dir, "hi")
    tokenizer = processor.tokenizer
    train_set, _ = train_data.prepare_split(config, "train", [DatasetSpec(tiny_dataset_dir)], None, processor)
    mixed, counts, rows = train_data.mix_replay(config, train_set, processor)
    assert counts == {"kept": 4, "dropped_over_30s": 0, "dropped_labels_over_448_tokens": 0, "mixed_in": 8,
                      "repeated": True}
    assert len(mixed) == 16
    # the replay rows as --ewc_weight's Fisher takes them: each of the four once
    assert sorted(tokenizer.decode(row["labels"], skip_special_tokens=True) for row in rows) == sorted(REPLAY_SENTENCES)

    language_of = {**{s: "hi" for s in datasets.load_from_disk(tiny_dataset_dir)["sentence"]},
                   REPLAY_SENTENCES[0]: "fr", REPLAY_SENTENCES[1]: "fr", REPLAY_SENTENCES[2]: "en",
                   REPLAY_SENTENCES[3]: "en"}
    first = {}
    for row in mixed:
        sentence = tokenizer.decode(row["labels"], skip_special_tokens=True)
        first.setdefault(language_of[sentence], (row, sentence))
    assert sorted(first) == ["en", "fr", "hi"]
    sot = tokenizer.convert_tokens_to_ids("<|startoftranscript|>")
    batch = DataCollatorSpeechSeq2SeqWithPadding(sot)([first[lang][0] for lang in ("hi", "fr", "en")])
    for labels, lang in zip(batch["labels"].tolist(), ("hi", "fr", "en")):
        expected = expected_labels(tokenizer, lang, first[lang][1])
        assert labels[:len(expected)] == expected, lang  # token by token
        assert set(labels[len(expected):]) <= {-100}


def test_training_batches_mix_the_languages_and_the_run_reports_replay(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                                      monkeypatch):
    replay, _ = prepared(tmp_path, "replay")
    seen = []
    collate = DataCollatorSpeechSeq2SeqWithPadding.__call__

    def recording(self, items):
        batch = collate(self, items)
        seen.append(set(batch["labels"][:, 0].tolist()))  # the language token of each row
        return batch

    monkeypatch.setattr(DataCollatorSpeechSeq2SeqWithPadding, "__call__", recording)
    out = tmp_path / "out"
    summary = train_run(quick_config(tiny_model_dir, tiny_dataset_dir, out, replay_datasets=(replay,),
                                     replay_language="en", replay_ratio=0.5, train_batchsize=4))
    tokenizer = loading.load_processor(tiny_model_dir).tokenizer
    both = {tokenizer.convert_tokens_to_ids("<|hi|>"), tokenizer.convert_tokens_to_ids("<|en|>")}
    assert both in seen  # one training batch holds both languages (evaluation batches are Hindi only)
    assert summary.filtering["replay"]["mixed_in"] == 8 and summary.train_samples == 16
    with open(out / "training_summary.json", encoding="utf-8") as f:
        assert json.load(f)["config"]["replay_ratio"] == 0.5
    card = open(out / "README.md", encoding="utf-8").read()
    assert f"| replay | `{replay}` |" in card
    assert "Replay: 50% of the training examples were drawn from the replay sets" in card
    assert "Augmentation: none." in card


def test_hf_language_column_names_and_replay_without_language(tiny_model_dir, tiny_dataset_dir, tmp_path):
    """Hub-style datasets: a language column of names ("English") is read as codes; replay rows without a
    language and no --replay_language are refused before featurising."""
    named = str(tmp_path / "named")
    datasets.load_from_disk(tiny_dataset_dir).add_column(
        "language", ["English", "German"] * 4).save_to_disk(named)
    config = quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", custom=False, replay_datasets=(named,))
    check_config(config)  # Hub datasets' languages are read when the data is loaded
    processor = tokenizer_for(tiny_model_dir, "hi")
    replay, _ = train_data.prepare_split(config, "replay", [DatasetSpec(named)], 4, processor)
    tokens = [processor.tokenizer.convert_ids_to_tokens(int(row["labels"][1])) for row in replay]
    assert sorted(tokens) == ["<|de|>", "<|de|>", "<|en|>", "<|en|>"]

    plain = quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out2", custom=False,
                         replay_datasets=(tiny_dataset_dir,))
    label = f"replay data ({tiny_dataset_dir}/train)"
    with pytest.raises(UserError, match=re.escape(f"{label}: examples without a language column; give "
                                                  f"--replay_language, the language of the replay speech (e.g. en)")):
        train_data.prepare_split(plain, "replay", check_dataset_specs(plain, "replay"), 4, processor, None)
    assert not os.path.exists(tmp_path / "out2")


def test_english_only_model_refuses_other_languages_in_the_rows(tiny_en_model_dir, tmp_path):
    data, _ = prepared(tmp_path, "mixed", languages=["utt0000 en", "utt0001 hi"])
    out = tmp_path / "out"
    with pytest.raises(UserError, match=re.escape(
            f"train data ({data}): holds Hindi (hi) examples, but the model is English-only (.en) and can be "
            f"trained on English only; use a multilingual Whisper model")):
        run.train(quick_config(tiny_en_model_dir, data, out, language=None))
    assert not glob.glob(str(out / ".feature_cache" / "*")) and not os.path.exists(out / "training_summary.json")

    english, _ = prepared(tmp_path, "english", languages=["utt0000 en", "utt0001 English"])
    processor = tokenizer_for(tiny_en_model_dir, None)
    config = quick_config(tiny_en_model_dir, english, tmp_path / "out2", language=None)
    rows, _ = train_data.prepare_split(config, "train", [DatasetSpec(english)], None, processor)
    sentences = {s for s in datasets.load_from_disk(english)["sentence"]}
    for row in rows:  # English rows on an English-only model: no language token
        sentence = processor.tokenizer.decode(row["labels"], skip_special_tokens=True)
        assert sentence in sentences
        assert list(row["labels"][1:]) == expected_labels(processor.tokenizer, None, sentence)


def test_timestamp_windows_carry_their_recordings_language(tiny_model_dir, tmp_path):
    from test_data_prep import SEGMENTS, write_kaldi_dir
    from whisper_finetune.data.features import LanguageLabels, featurize_windows

    good = [s for s in SEGMENTS if s[0] in ("recA-0000", "recA-0300", "recB-0050", "recB-0426")]
    source, _ = write_kaldi_dir(str(tmp_path / "kaldi"), segments=good)
    with open(os.path.join(source, "languages"), "w", encoding="utf-8") as f:
        f.write("recA-0000 en\nrecA-0300 en\nrecB-0050 fr\nrecB-0426 fr\n")
    data = str(tmp_path / "data")
    prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=data))
    processor = tokenizer_for(tiny_model_dir, "hi")
    tokenizer = processor.tokenizer
    rows = datasets.load_from_disk(data)
    windows, _ = featurize_windows(rows, processor, 16000, 1.0)
    heads = sorted(tuple(tokenizer.convert_ids_to_tokens(row["labels"][:3])) for row in windows)
    assert heads == [("<|startoftranscript|>", "<|en|>", "<|transcribe|>"),
                     ("<|startoftranscript|>", "<|fr|>", "<|transcribe|>")]

    mixed = rows.map(lambda row: {"language": "de" if row["id"] == "recB-0426" else row["language"]})
    with pytest.raises(UserError, match=re.escape("windows: recording recB has segments in several languages (de, "
                                                  "fr); a timestamp window carries one language token")):
        featurize_windows(mixed, processor, 16000, 1.0, languages=LanguageLabels(tokenizer, source="windows"))


# --------------------------------------------------------------------------------------------- SpecAugment
def test_spec_augment_masks_training_steps_only_and_is_off_in_saved_configs(tiny_model_dir, tiny_dataset_dir,
                                                                            tmp_path, monkeypatch):
    seen = []
    build = run.build_model

    def build_and_watch(config, language):
        model = build(config, language)

        def watch(module, args, kwargs):
            features = args[0] if args else kwargs["input_features"]  # (batch, n_mels, frames)
            masked_frames = int((features == 0).all(dim=1).sum())  # time masks zero every channel of a frame
            seen.append((module.training, masked_frames, model.config.apply_spec_augment))

        model.model.encoder.register_forward_pre_hook(watch, with_kwargs=True)
        return model

    monkeypatch.setattr(run, "build_model", build_and_watch)
    out = tmp_path / "out"
    train_run(quick_config(tiny_model_dir, tiny_dataset_dir, out, spec_augment=True, mask_time_prob=0.1,
                           mask_time_length=20))
    steps = [s for s in seen if s[0]]
    evaluations = [s for s in seen if not s[0]]
    assert len(steps) == 4 and all(masked > 0 and on for _, masked, on in steps)
    assert evaluations and all(masked == 0 and not on for _, masked, on in evaluations)
    for folder in [out, *glob.glob(str(out / "checkpoint-*"))]:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            saved = json.load(f)
        assert saved["apply_spec_augment"] is False, folder
        assert (saved["mask_time_prob"], saved["mask_time_length"]) == (0.1, 20)
    assert "Augmentation: SpecAugment in training steps (time masks of 20 frames over 10% of frames" in \
        open(out / "README.md", encoding="utf-8").read()


# --------------------------------------------------------------------------------------------- waveform
def test_augment_changes_each_examples_features_between_epochs(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                             monkeypatch):
    features = {}
    call = augment.OnTheFlyFeatures.__call__

    def recording(self, items):
        mels, seconds = call(self, items)
        for item, mel in zip(items, mels):
            features[(self.epoch, int(item[INDEX_COLUMN]))] = mel.clone()
        return mels, seconds

    monkeypatch.setattr(augment.OnTheFlyFeatures, "__call__", recording)
    out = tmp_path / "out"
    summary = train_run(quick_config(tiny_model_dir, tiny_dataset_dir, out, augment=True, train_strategy="epoch",
                                     num_epochs=2, max_train_samples=4, eval_steps=None))
    assert summary.global_step == 4 and sorted(features) == [(e, i) for e in (0, 1) for i in range(4)]
    for index in range(4):
        assert not torch.equal(features[(0, index)], features[(1, index)]), index
    card = open(out / "README.md", encoding="utf-8").read()
    assert "Augmentation: waveform augmentation drawn anew each epoch (speed 0.9/1.0/1.1, coloured noise at 10-30 dB" \
        in card

    # Reproducible: the same epoch and row give the same features, with the run's RNG state left alone.
    config = quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "again", augment=True, max_train_samples=4)
    processor = tokenizer_for(tiny_model_dir, "hi")
    rows, _ = train_data.prepare_split(config, "train", [DatasetSpec(tiny_dataset_dir)], 4, processor)
    rows = train_data.numbered(rows)
    assert SAMPLES_COLUMN in rows.column_names and "input_features" not in rows.column_names
    collator = DataCollatorSpeechSeq2SeqWithPadding(0, None, train_data.on_the_fly_features(config, processor))
    state = np.random.get_state()[1].copy()
    for epoch in (0, 1):
        collator.set_epoch(epoch)
        batch = collator([rows[i] for i in range(4)])["input_features"]
        assert all(torch.equal(batch[i], features[(epoch, i)]) for i in range(4))
    assert np.array_equal(np.random.get_state()[1], state)


def dominant_hz(audio, rate=16000):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("semitones, low, high, shifted", [
    # speed alone: 200 Hz x 0.9 / 1.0 / 1.1
    (0.0, 179.0, 221.0, False),
    # and a pitch shift of up to 4 semitones (x 2 ** (+-4 / 12)) on half the clips
    (4.0, 200 * 0.9 * 2 ** (-4 / 12) - 1, 200 * 1.1 * 2 ** (4 / 12) + 1, True),
])
def test_pitch_shift_moves_a_tone_within_the_given_semitones(semitones, low, high, shifted):
    tone = (0.5 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype(np.float32)  # (16000,), 1 s
    tone.setflags(write=False)  # as a dataset's decoded audio is
    augmenter = augment.WaveformAugmenter(16000, (60.0, 60.0), pitch_semitones=semitones)
    heard = [dominant_hz(augmenter(tone, seed)) for seed in range(40)]
    assert all(low <= hz <= high for hz in heard), heard
    # beyond what speed perturbation alone can reach (180-220 Hz), and only for some of the clips
    beyond = [hz for hz in heard if not 179 <= hz <= 221]
    assert (0 < len(beyond) < len(heard)) if shifted else not beyond, heard


def test_without_augment_features_are_computed_once_as_before(tiny_model_dir, tiny_dataset_dir, tmp_path,
                                                              monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an augmentation object was made without --augment")

    monkeypatch.setattr(augment.WaveformAugmenter, "__init__", refuse)
    monkeypatch.setattr(augment.OnTheFlyFeatures, "__init__", refuse)
    out = tmp_path / "out"
    train_run(quick_config(tiny_model_dir, tiny_dataset_dir, out, num_steps=2, eval_steps=2))
    cached = datasets.Dataset.from_file(glob.glob(str(out / ".feature_cache" / "train-*.arrow"))[0])
    assert cached.column_names == ["input_features", "labels", "input_length"]
    # what featurize computes directly from the shuffled rows, as before replay and augmentation existed
    processor = tokenizer_for(tiny_model_dir, "hi")
    rows = load_datasets([DatasetSpec(tiny_dataset_dir)], custom=True)[0].shuffle(seed=42)
    direct = featurize(rows, processor, 16000)
    assert cached["labels"] == direct["labels"]
    assert np.array_equal(np.asarray(cached["input_features"]), np.asarray(direct["input_features"]))


# --------------------------------------------------------------------------------------------- options
def bad_option_cases(tmp_path, tiny_dataset_dir):
    empty = tmp_path / "no-noise"
    os.makedirs(empty, exist_ok=True)
    return [
        ({"replay_ratio": 1.0}, "--replay_ratio 1.0: must be more than 0 and less than 1"),
        ({"replay_language": "en"}, "--replay_language en: needs --replay_datasets"),
        ({"replay_datasets": (tiny_dataset_dir,), "replay_language": "Klingon"},
         "--replay_language Klingon: unknown language 'Klingon'"),
        ({"replay_datasets": (tiny_dataset_dir,)},
         f"--replay_datasets {tiny_dataset_dir}: examples without a language (data_prep's languages file); give "
         f"--replay_language, the language of the replay speech (e.g. en)"),
        ({"replay_datasets": ("/no/such/replay",), "replay_language": "en"},
         "/no/such/replay: no such dataset folder"),
        ({"custom": False, "streaming": True, "replay_datasets": (tiny_dataset_dir,), "replay_language": "en"},
         "--replay_datasets with --streaming True: replay is mixed into a featurised training set"),
        ({"mask_time_prob": 1.5}, "--mask_time_prob 1.5: must be between 0 and 1"),
        ({"mask_feature_length": 0}, "--mask_feature_length 0: must be at least 1"),
        ({"mask_feature_length": 81}, "--mask_feature_length 81: must be at most the model's 80 mel channels"),
        ({"dynamic_audio_context": True, "mask_time_length": 200},
         "--mask_time_length 200: must be less than the 200 frames of the shortest training input"),
        ({"spec_augment": True, "mask_time_prob": 0.0},
         "--spec_augment True masks nothing with --mask_time_prob 0 and --mask_feature_prob 0"),
        ({"augment_snr_db": (30.0, 10.0)}, "--augment_snr_db 30.0 10.0: the first value (min) exceeds the second"),
        ({"augment_snr_db": (10.0,)}, "--augment_snr_db 10.0: give two values, min and max (dB), e.g. 10 30"),
        ({"noise_dir": str(empty)}, f"--noise_dir {empty}: needs --augment True"),
        ({"augment_pitch_semitones": 3.0}, "--augment_pitch_semitones 3.0: needs --augment True"),
        ({"augment": True, "augment_pitch_semitones": 13.0}, "--augment_pitch_semitones 13.0: give 0 (off) to 12"),
        ({"augment": True, "augment_pitch_semitones": -2.0}, "--augment_pitch_semitones -2.0: give 0 (off) to 12"),
        ({"augment": True, "noise_dir": str(empty)},
         f"--noise_dir {empty}: holds no audio files (wav, flac, mp3, ogg...)"),
        ({"augment": True, "noise_dir": "/no/such/noise"}, "--noise_dir /no/such/noise: no such folder"),
        ({"augment": True, "timestamps": True},
         "--augment True with --timestamps True: speed perturbation would move the speech away from its timestamp"),
    ]


def test_bad_replay_and_augmentation_options_are_refused(tiny_model_dir, tiny_en_model_dir, tiny_dataset_dir,
                                                         tmp_path):
    for overrides, message in bad_option_cases(tmp_path, tiny_dataset_dir):
        with pytest.raises(UserError, match=re.escape(message)):
            check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", **overrides))
    with pytest.raises(UserError, match=re.escape("--replay_language hi: the model is English-only (.en) and can be "
                                                  "trained on English only; give en or None")):
        check_config(quick_config(tiny_en_model_dir, tiny_dataset_dir, tmp_path / "out", language=None,
                                  replay_datasets=(tiny_dataset_dir,), replay_language="hi"))
    assert not os.path.exists(tmp_path / "out")


def test_script_refuses_a_bad_snr_range_in_one_line(tiny_model_dir, tiny_dataset_dir, tmp_path):
    proc = run_script(CUSTOM, "--model_name", tiny_model_dir, "--train_datasets", tiny_dataset_dir,
                      "--eval_datasets", tiny_dataset_dir, "--output_dir", tmp_path / "out", "--language", "hi",
                      "--augment", "True", "--augment_snr_db", 30, 10)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --augment_snr_db 30.0 10.0: the first value (min) exceeds the second (max)"
    assert not os.path.exists(tmp_path / "out")


def train_run(config):
    summary = run.train(config)
    assert summary.global_step > 0
    return summary

"""--replay_audio: untranscribed audio labelled once by the base model (beam search, cached) and replayed."""
import functools
import json
import os
import re
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import run_script
from test_replay_augment import prepared, train_run
from test_train import CUSTOM, HF, QUICK, quick_config, summary_of
from whisper_finetune.train import labelling
from whisper_finetune.data.loading import load_custom_dataset
from whisper_finetune.errors import UserError
from whisper_finetune.model import loading
from whisper_finetune.testing import synthetic_speech
from whisper_finetune.train.checks import check_config


def audio_folder(root, seconds=(1.0, 1.3, 1.6), long_seconds=None):
    """A folder of untranscribed clips (one in a subfolder, one FLAC) and a stray text file."""
    folder = root / "old_domain"
    (folder / "more").mkdir(parents=True)
    for i, length in enumerate(seconds):
        name = folder / ("more" if i == 1 else "") / f"clip{i}.{'flac' if i == 2 else 'wav'}"
        sf.write(name, synthetic_speech(length, seed=i), 16000)
    if long_seconds:
        sf.write(folder / "long.wav", synthetic_speech(long_seconds, seed=7), 16000)
    (folder / "notes.txt").write_text("not audio\n")
    return str(folder)


def detected_language(model_dir, audio):
    """The base model's language token for one clip, straight from transformers' detect_language."""
    processor = loading.load_processor(model_dir)
    model = loading.load_model(model_dir)
    features = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        token = model.detect_language(features).reshape(-1)[0].item()
    return processor.tokenizer.convert_ids_to_tokens(token)[2:-2]


def test_a_folder_is_found_recursively_and_long_files_are_cut_into_windows(tmp_path):
    folder = audio_folder(tmp_path, long_seconds=65.0)
    clips = labelling.audio_clips(folder)
    assert [c.id for c in clips] == ["clip0", "clip2", "long#0", "long#1", "long#2", "more/clip1"]
    windows = [len(c.audio) / 16000 for c in clips if c.id.startswith("long")]
    assert windows == pytest.approx([65 / 3] * 3, abs=1e-3) and max(windows) <= labelling.WINDOW_SECONDS
    assert np.concatenate([c.audio for c in clips if c.id.startswith("long")]).shape == (65 * 16000,)


def test_labels_once_then_reuses_the_cache_and_rows_carry_the_base_models_language(tiny_model_dir, tmp_path,
                                                                                   monkeypatch):
    folder = audio_folder(tmp_path)
    settings = labelling.LabelSettings(tiny_model_dir, num_beams=2, max_new_tokens=8)
    first = labelling.replay_audio([folder], settings, str(tmp_path / "out"))
    assert (first.clips, first.decoded, first.cached, first.empty) == (3, 3, 0, 0)
    rows = load_custom_dataset(first.dataset)
    by_id = {uid.split("-", 1)[1]: (text, lang) for uid, text, lang in zip(rows["id"], rows["sentence"],
                                                                           rows["language"])}
    assert sorted(by_id) == ["clip0", "clip2", "more/clip1"]
    for uid, (text, language) in by_id.items():
        path = os.path.join(folder, uid + (".flac" if uid == "clip2" else ".wav"))
        assert language == detected_language(tiny_model_dir, sf.read(path, dtype="float32")[0])
        assert text
    assert first.languages == dict(Counter(language for _, language in by_id.values()))
    with open(first.cache, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    assert [line["id"] for line in lines] == ["clip0", "clip2", "more/clip1"]
    assert {json.loads(line["settings"])["num_beams"] for line in lines} == {2}

    def no_decoding(*args, **kwargs):
        raise AssertionError("loaded the model to label clips the cache holds")

    monkeypatch.setattr(labelling, "Labeller", no_decoding)
    again = labelling.replay_audio([folder], settings, str(tmp_path / "out"))
    assert (again.decoded, again.cached, again.dataset) == (0, 3, first.dataset)


def test_a_given_language_labels_in_it_and_is_cached_apart(tiny_model_dir, tmp_path):
    folder = audio_folder(tmp_path, seconds=(1.0, 1.2))
    out = str(tmp_path / "out")
    detected = labelling.replay_audio([folder], labelling.LabelSettings(tiny_model_dir, max_new_tokens=4), out)
    hindi = labelling.replay_audio([folder], labelling.LabelSettings(tiny_model_dir, "hi", max_new_tokens=4), out)
    assert hindi.decoded == 2 and hindi.languages == {"hi": 2} and detected.languages != {"hi": 2}
    assert load_custom_dataset(hindi.dataset)["language"] == ["hi", "hi"]


def test_a_cut_off_cache_line_is_labelled_again(tiny_model_dir, tmp_path):
    folder = audio_folder(tmp_path, seconds=(1.0, 1.2))
    settings = labelling.LabelSettings(tiny_model_dir, max_new_tokens=4)
    first = labelling.replay_audio([folder], settings, str(tmp_path / "out"))
    with open(first.cache, encoding="utf-8") as f:
        lines = f.readlines()
    with open(first.cache, "w", encoding="utf-8") as f:  # a kill in the middle of the second line
        f.write(lines[0] + lines[1][: len(lines[1]) // 2])
    again = labelling.replay_audio([folder], settings, str(tmp_path / "out"))
    assert (again.decoded, again.cached) == (1, 1)
    third = labelling.replay_audio([folder], settings, str(tmp_path / "out"))  # the new line was written whole
    assert (third.decoded, third.cached) == (0, 2)


def test_a_data_prep_folder_is_read_for_its_audio_and_its_text_ignored(tiny_model_dir, tmp_path):
    source, _ = prepared(tmp_path, "old", n=2, sentences=["the words we do not use", "nor these"])
    result = labelling.replay_audio([source], labelling.LabelSettings(tiny_model_dir, max_new_tokens=4),
                                    str(tmp_path / "out"))
    rows = load_custom_dataset(result.dataset)
    assert [uid.split("-", 1)[1] for uid in rows["id"]] == ["utt0000", "utt0001"]
    assert not {"the words we do not use", "nor these"} & set(rows["sentence"])


def test_an_english_only_model_labels_without_a_language_token(tiny_en_model_dir, tmp_path):
    folder = audio_folder(tmp_path, seconds=(1.0,))
    result = labelling.replay_audio([folder], labelling.LabelSettings(tiny_en_model_dir, max_new_tokens=4),
                                    str(tmp_path / "out"))
    assert result.languages == {"en": 1}
    with open(result.cache, encoding="utf-8") as f:
        assert json.loads(f.readline())["language"] is None


@pytest.mark.parametrize("script", [CUSTOM, HF])
def test_a_folder_without_audio_is_refused_in_one_line(tiny_model_dir, tiny_dataset_dir, tmp_path, script):
    empty = tmp_path / "no_audio"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("text only\n")
    proc = run_script(script, "--model_name", tiny_model_dir, "--train_datasets", tiny_dataset_dir,
                      "--eval_datasets", tiny_dataset_dir, "--output_dir", tmp_path / "out", "--language", "hi",
                      "--replay_audio", empty, "--num_steps", 2, *QUICK)
    assert proc.returncode == 2
    from audiomentations.core.utils import SUPPORTED_EXTENSIONS

    assert proc.stderr.strip() == (f"error: --replay_audio {empty}: no audio files in it (looked for "
                                   f"{' '.join(SUPPORTED_EXTENSIONS)}) and not a data_prep dataset")
    assert not os.path.exists(tmp_path / "out")


def test_a_missing_folder_is_refused_before_any_work(tiny_model_dir, tiny_dataset_dir, tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(UserError, match="^" + re.escape(f"--replay_audio {missing}: no such folder") + "$"):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", replay_audio=(missing,)))


def test_replay_language_and_distill_rows_replay_work_with_replay_audio_alone(tiny_model_dir, tiny_dataset_dir,
                                                                             tmp_path):
    folder = audio_folder(tmp_path, seconds=(1.0,))
    check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", replay_audio=(folder,),
                              replay_language="en", distill_weight=1.0, distill_rows="replay"))
    with pytest.raises(UserError, match=r"^--distill_rows replay holds the replayed rows to the base model: it needs "
                                        r"--distill_weight above 0 and --replay_datasets or --replay_audio$"):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", distill_weight=1.0,
                                  distill_rows="replay"))
    with pytest.raises(UserError, match=r"^--replay_language en: needs --replay_datasets or --replay_audio$"):
        check_config(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out", replay_language="en"))


def test_a_run_replays_the_labelled_audio_and_a_second_run_decodes_nothing(tiny_model_dir, tiny_dataset_dir,
                                                                          tmp_path, monkeypatch):
    folder = audio_folder(tmp_path)
    out = tmp_path / "out"
    # the run's own settings (beam 5), with the random model's babble cut at 8 tokens to keep the test quick
    monkeypatch.setattr(labelling, "LabelSettings", functools.partial(labelling.LabelSettings, max_new_tokens=8))
    config = quick_config(tiny_model_dir, tiny_dataset_dir, out, replay_audio=(folder,), replay_ratio=0.5,
                          distill_weight=1.0, distill_rows="replay", num_steps=2, eval_steps=2)
    summary = train_run(config)
    assert summary.filtering["replay"]["mixed_in"] == 8 and summary.train_samples == 16
    made = summary.replay_audio
    assert (made["clips"], made["decoded"], made["cached"]) == (3, 3, 0)
    assert made["settings"] == {"model": tiny_model_dir, "language": None, "num_beams": 5, "max_new_tokens": 8}
    assert summary_of(out).replay_audio == made
    labelled = load_custom_dataset(made["dataset"])
    assert set(labelled["language"]) == set(made["languages"])
    card = open(out / "README.md", encoding="utf-8").read()
    assert (f"Replay audio: 3 clips (0.1 min) of untranscribed speech from `{folder}`, labelled by "
            f"`{tiny_model_dir}` itself (beam 5, each in its detected language") in card

    def no_decoding(*args, **kwargs):
        raise AssertionError("loaded the model to label clips the cache holds")

    monkeypatch.setattr(labelling, "Labeller", no_decoding)
    again = train_run(quick_config(tiny_model_dir, tiny_dataset_dir, out, replay_audio=(folder,), replay_ratio=0.5,
                                   distill_weight=1.0, distill_rows="replay", num_steps=2, eval_steps=2,
                                   overwrite_output_dir=True))
    assert (again.replay_audio["decoded"], again.replay_audio["cached"]) == (0, 3)
    assert again.replay_audio["dataset"] == made["dataset"]


def test_audio_the_model_hears_no_words_in_is_not_replayed(tiny_model_dir, tiny_dataset_dir, tmp_path, monkeypatch):
    folder = audio_folder(tmp_path, seconds=(1.0, 1.2))
    class Deaf:
        def __init__(self, *args, **kwargs):
            pass

        def label(self, clips, progress=None):
            return {key: labelling.Label("", "en") for key in clips}

    monkeypatch.setattr(labelling, "Labeller", Deaf)
    result = labelling.replay_audio([folder], labelling.LabelSettings(tiny_model_dir), str(tmp_path / "out"))
    assert (result.empty, result.dataset) == (2, None)
    with pytest.raises(UserError, match=r"^--replay_audio: the base model heard no words \(or only a repetition loop\) "
                                        r"in any of its 2 clip\(s\); "
                                        r"nothing to replay$"):
        train_run(quick_config(tiny_model_dir, tiny_dataset_dir, tmp_path / "out2", replay_audio=(folder,)))


@pytest.mark.parametrize("text, looped", [
    ("", False),
    ("Okay. Okay.", False),
    ("he turned sharply and faced gregson across the table", False),
    ("4-" * 60 + "4", True),
    ("I don't know. " * 20, True),
    ("ha " * 100, True),
])
def test_a_repetition_loop_is_told_by_its_compression_ratio(text, looped):
    assert labelling.Label(text, "en").looped is looped


def test_a_label_that_is_a_repetition_loop_is_not_replayed(tiny_model_dir, tmp_path, monkeypatch):
    folder = audio_folder(tmp_path, seconds=(1.0, 1.2))
    clips = labelling.audio_clips(folder)
    texts = {clips[0].sha256: "4-" * 60 + "4", clips[1].sha256: "he turned sharply and faced gregson"}

    class Looping:
        def __init__(self, *args, **kwargs):
            pass

        def label(self, batch, progress=None):
            return {key: labelling.Label(texts[key], "en") for key in batch}

    monkeypatch.setattr(labelling, "Labeller", Looping)
    result = labelling.replay_audio([folder], labelling.LabelSettings(tiny_model_dir), str(tmp_path / "out"))
    assert (result.clips, result.empty, result.looped) == (2, 0, 1)
    assert load_custom_dataset(result.dataset)["sentence"] == ["he turned sharply and faced gregson"]


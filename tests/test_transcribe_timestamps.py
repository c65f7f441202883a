"""transcribe_audio.py on timestamps: flag checks, the segmentation rule, the VAD time map, words, guards.

Real-model tests decode stock whisper-tiny.en (``WHISPER_FT_TEST_MODEL``) on ``longform/long_en.flac``.
"""
import importlib.util
import json
import os
import re
import shutil
from types import SimpleNamespace

import jiwer
import numpy as np
import pytest
import soundfile as sf

from conftest import REPO_ROOT, prepared_for, run_script
from whisper_finetune.decode import transcription, vad
from whisper_finetune.audio import SAMPLE_RATE, load_audio
from whisper_finetune.decode.options import DecodingOptions, GuardOptions, validate_options
from whisper_finetune.decode.backends import make_decoder
from whisper_finetune.errors import OptionError
from whisper_finetune.testing import synthetic_speech
from whisper_finetune.text import get_normalizer
from whisper_finetune.decode.transcription import CUT_AT_SILENCE, TIMESTAMPS, Segment, Word

WHISPER_GUARDS = GuardOptions(temperature_fallback="0.0,0.2,0.4,0.6,0.8,1.0", compression_ratio_threshold=2.4,
                              logprob_threshold=-1.0, no_speech_threshold=0.6)


def _main(script="transcribe_audio.py"):
    spec = importlib.util.spec_from_file_location(script.replace(".py", ""), os.path.join(REPO_ROOT, script))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("clip") / "tone.flac")
    sf.write(path, synthetic_speech(2.0), SAMPLE_RATE)
    return path


def _silence_and_tone(seconds=20, seed=0):
    """Low noise, then a steady 440 Hz tone: neither is speech."""
    rng = np.random.default_rng(seed)
    half = seconds * SAMPLE_RATE // 2
    t = np.arange(half) / SAMPLE_RATE
    noise = 0.003 * rng.standard_normal(half)
    return np.concatenate([noise, 0.3 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)


# --- flags ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("script,args,message", [
    ("transcribe_audio.py", ["--timestamps", "True", "--backend", "ctranslate2"],
     "--timestamps True: only --backend pytorch decodes long-form on timestamps (transformers' generate); with "
     "--backend ctranslate2 leave it False: long audio is then cut at silence"),
    ("jax_transcribe_audio.py", ["--timestamps", "True"],
     "--timestamps True: only --backend pytorch decodes long-form on timestamps (transformers' generate); with "
     "--backend jax leave it False: long audio is then cut at silence"),
    ("transcribe_audio.py", ["--word_timestamps", "True"],
     "--word_timestamps True: needs --timestamps True (word times come from the decoding on timestamps)"),
    ("transcribe_audio.py", ["--logprob_threshold", "-1", "--backend", "ctranslate2"],
     "--logprob_threshold -1.0: does nothing without a temperature to fall back to"),
    ("transcribe_audio.py", ["--temperature_fallback", "0,0.2", "--backend", "ctranslate2"],
     "--temperature_fallback 0,0.2: needs --backend pytorch: the guards are transformers' generate's "
     "(--backend ctranslate2 decodes without them)"),
    ("jax_transcribe_audio.py", ["--no_speech_threshold", "0.6", "--logprob_threshold", "-1"],
     "--logprob_threshold -1.0: needs --backend pytorch: the guards are transformers' generate's "
     "(--backend jax decodes without them)"),
    ("transcribe_audio.py", ["--condition_on_previous_text", "True"],
     "--condition_on_previous_text True: applies only to long-form decoding on timestamps (transcribe_audio.py "
     "--timestamps True): utterances and cut-at-silence pieces are decoded each on its own, with no previous text"),
])
def test_scripts_refuse_before_loading_anything(tiny_model_dir, clip, script, args, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        _main(script)(["--hf_model", tiny_model_dir, "--path_to_audio", clip, *args])


def test_refusal_is_one_line_with_exit_status_2(tiny_model_dir, clip):
    result = run_script("jax_transcribe_audio.py", "--hf_model", tiny_model_dir, "--path_to_audio", clip,
                        "--timestamps", "True")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --timestamps True: only --backend pytorch")


@pytest.mark.parametrize("guards,message", [
    (GuardOptions(temperature_fallback="0.0,hot"), "--temperature_fallback 0.0,hot: give comma-separated "
     "temperatures from 0 to 1 in ascending order, e.g. 0.0,0.2,0.4,0.6,0.8,1.0 (Whisper's) or 0.0 (no fallback)"),
    (GuardOptions(temperature_fallback="0.4,0.2"), "--temperature_fallback 0.4,0.2: give comma-separated"),
    (GuardOptions(temperature_fallback="0.0,1.5"), "--temperature_fallback 0.0,1.5: give comma-separated"),
    (GuardOptions(temperature_fallback="0,0"), "--temperature_fallback 0,0: give comma-separated"),
    (GuardOptions(temperature_fallback="0,1", compression_ratio_threshold=0.5),
     "--compression_ratio_threshold 0.5: must be more than 1 (a gzip compression ratio; Whisper's default: 2.4), "
     "or None"),
    (GuardOptions(temperature_fallback="0,1", logprob_threshold=0.5),
     "--logprob_threshold 0.5: must be below 0 (an average log-probability; Whisper's default: -1.0), or None"),
    (GuardOptions(no_speech_threshold=0.6),
     "--no_speech_threshold 0.6: needs --logprob_threshold too: a window is skipped as silence only when its "
     "average log-probability is also below it (Whisper's default: -1.0)"),
    (GuardOptions(no_speech_threshold=1.5, logprob_threshold=-1.0),
     "--no_speech_threshold 1.5: must be between 0 and 1 (a probability; Whisper's default: 0.6), or None"),
    (GuardOptions(compression_ratio_threshold=2.4),
     "--compression_ratio_threshold 2.4: does nothing without a temperature to fall back to: pass "
     "--temperature_fallback with two or more temperatures, e.g. 0.0,0.2,0.4,0.6,0.8,1.0"),
])
def test_guard_values_are_checked(guards, message):
    with pytest.raises(OptionError, match=re.escape(message)):
        validate_options(DecodingOptions(guards=guards), long_form=True)


def test_guard_combinations_that_work_are_accepted():
    for guards in (GuardOptions(), WHISPER_GUARDS, GuardOptions(logprob_threshold=-1.0, no_speech_threshold=0.6),
                   GuardOptions(temperature_fallback="0.0,0.5", condition_on_previous_text=True)):
        validate_options(DecodingOptions(guards=guards), long_form=True)
    with pytest.raises(OptionError, match=re.escape("--max_new_tokens 300: must be at most 220 with "
                                                    "--condition_on_previous_text True")):
        validate_options(DecodingOptions(max_new_tokens=300, guards=GuardOptions(condition_on_previous_text=True)),
                         long_form=True)


def test_default_guards_leave_generate_arguments_as_before(tiny_en_model_dir):
    decoder = make_decoder(prepared_for(tiny_en_model_dir, max_new_tokens=5), "cpu")
    assert decoder.generate_kwargs() == {"max_new_tokens": 5, "num_beams": 1, "return_timestamps": False}
    assert GuardOptions(temperature_fallback="0").changed() == {}
    assert WHISPER_GUARDS.generate_kwargs() == {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
                                                "compression_ratio_threshold": 2.4, "logprob_threshold": -1.0,
                                                "no_speech_threshold": 0.6}


def test_a_run_with_everything_on_prints_no_library_warnings(tiny_en_model_dir, tmp_path):
    from test_quiet import _warnings

    result = run_script("transcribe_audio.py", "--hf_model", tiny_en_model_dir, "--path_to_audio",
                        "sample_data/audio/sample_0000.flac", "--max_new_tokens", "4", "--timestamps", "True",
                        "--word_timestamps", "True", "--vad", "True", "--temperature_fallback", "0,0.5,1",
                        "--logprob_threshold", "-1", "--no_speech_threshold", "0.6", "--compression_ratio_threshold",
                        "2.4", "--condition_on_previous_text", "True", "--output", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _warnings(result.stderr) == [] and "segmentation: timestamps" in result.stderr
    assert json.load(open(tmp_path / "out.json", encoding="utf-8"))["decoding"]["guards"]["logprob_threshold"] == -1


# --- which segmentation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("timestamp_training,summary,no_timestamps_token_id,can", [
    ({"ratio": 0.5}, True, 50362, True),  # trained with --timestamps True (the summary does not matter)
    (False, False, 50362, False),  # trained without
    (None, True, 50362, False),  # an older fine-tune of ours: <|notimestamps|> only
    (None, False, 50362, True),  # stock or third-party
    (None, False, None, False),  # a generation config that lacks the timestamp tokens
])
def test_which_models_can_predict_timestamps(tmp_path, timestamp_training, summary, no_timestamps_token_id, can):
    model_config = SimpleNamespace() if timestamp_training is None else \
        SimpleNamespace(timestamp_training=timestamp_training)
    if summary:
        (tmp_path / "training_summary.json").write_text("{}")
    generation_config = SimpleNamespace(no_timestamps_token_id=no_timestamps_token_id)
    answer, reason = transcription.can_predict_timestamps(model_config, generation_config, str(tmp_path))
    assert answer is can and reason


def _copy_model(src, dst, timestamp_training=None, summary=False):
    shutil.copytree(src, dst)
    if timestamp_training is not None:
        config = json.load(open(os.path.join(dst, "config.json"), encoding="utf-8"))
        config["timestamp_training"] = timestamp_training
        json.dump(config, open(os.path.join(dst, "config.json"), "w", encoding="utf-8"))
    if summary:
        open(os.path.join(dst, "training_summary.json"), "w").write("{}")
    return dst


def test_segmentation_follows_the_model_and_is_logged(tiny_en_model_dir, tmp_path, capsys):
    audio = str(tmp_path / "long.flac")
    sf.write(audio, synthetic_speech(35), SAMPLE_RATE)
    old = _copy_model(tiny_en_model_dir, str(tmp_path / "old"), summary=True)
    new = _copy_model(tiny_en_model_dir, str(tmp_path / "new"), timestamp_training={"ratio": 0.5}, summary=True)
    main = _main()
    for model, expected in ((old, CUT_AT_SILENCE), (new, TIMESTAMPS)):
        out = str(tmp_path / f"{os.path.basename(model)}.json")
        assert main(["--hf_model", model, "--path_to_audio", audio, "--timestamps", "True", "--max_new_tokens",
                     "4", "--output", out]) == 0
        data = json.load(open(out, encoding="utf-8"))
        # (the random model's few tokens may be punctuation alone, which the timestamps path drops)
        assert data["segmentation"] == expected and isinstance(data["segments"], list)
        assert data["decoder_prompt"] == ("<|startoftranscript|><|notimestamps|>" if expected == CUT_AT_SILENCE
                                          else "<|startoftranscript|>")
    logged = [line for line in capsys.readouterr().err.splitlines() if line.startswith("segmentation:")]
    assert logged == ["segmentation: cut-at-silence (--timestamps True, but the model cannot predict timestamps: "
                      "fine-tuned by an older version of this project on <|notimestamps|> only "
                      "(training_summary.json))",
                      'segmentation: timestamps (the model is fine-tuned with timestamps (timestamp_training '
                      '{"ratio": 0.5}))']
    with pytest.raises(OptionError, match=re.escape("--word_timestamps True: needs decoding on timestamps, and this "
                                                    "model cannot predict timestamps (fine-tuned by an older")):
        main(["--hf_model", old, "--path_to_audio", audio, "--timestamps", "True", "--word_timestamps", "True"])


# --- voice activity detection and the time map ---------------------------------------------------------------


SPANS = ((1.0, 3.0), (10.0, 11.5), (20.0, 24.0))  # joined: [0, 2), [2, 3.5), [3.5, 7.5]


@pytest.mark.parametrize("joined,side,original", [
    (0.0, "start", 1.0), (0.5, "start", 1.5), (1.999, "start", 2.999),
    (2.0, "start", 10.0), (2.0, "end", 3.0),  # the junction: a start is the next span's, an end the previous one's
    (3.0, "end", 11.0), (3.5, "start", 20.0), (3.5, "end", 11.5), (7.5, "end", 24.0),
    (9.0, "end", 24.0), (-0.1, "start", 1.0),  # outside the joined speech: held to the first start / last end
])
def test_time_map_table(joined, side, original):
    assert vad.TimeMap(SPANS).to_original(joined, side) == pytest.approx(original)


@pytest.mark.parametrize("joined,side,original", [
    (2.3, "end", 2.0), (2.3, "start", 9.3),  # an end just past a junction stays before the removed audio
    (1.7, "start", 9.0), (1.7, "end", 1.7),  # a start just before one goes after it
    (2.5, "end", 9.5), (1.5, "start", 1.5),  # further away: mapped as they are
    (5.2, "end", 12.2), (4.8, "start", 11.8),  # spans that touch in the original: nothing to snap across
])
def test_time_map_snaps_times_near_a_junction_across_the_removed_audio(joined, side, original):
    time_map = vad.TimeMap(((0.0, 2.0), (9.0, 12.0), (12.0, 20.0)), slack=0.4)  # joined: [0, 2), [2, 5), [5, 13]
    assert time_map.to_original(joined, side) == pytest.approx(original)


def test_segments_and_words_map_back_to_the_original_audio():
    time_map = vad.TimeMap(SPANS)
    [segment] = transcription.map_segments(
        [Segment(0.5, 3.0, "one two", (Word("one", 0.5, 2.0), Word("two", 2.0, 3.0)))], time_map)
    assert (segment.start, segment.end) == (1.5, 11.0)
    assert [(w.start, w.end) for w in segment.words] == [(1.5, 3.0), (10.0, 11.0)]
    assert time_map.speech_seconds == pytest.approx(7.5)
    slack = vad.TimeMap(SPANS, slack=0.4)
    segments = transcription.map_segments([
        Segment(1.0, 2.2, "one two", (Word("one", 1.0, 1.7), Word("two", 1.7, 2.2))),
        Segment(1.8, 3.0, "three", (Word("three", 2.1, 3.0),))], slack)
    # ends just past the junction stay before the removed audio; the second cue starts after it, its words
    # start where they are
    assert [(s.start, s.end) for s in segments] == [(2.0, 3.0), (10.0, 11.0)]
    assert [(w.start, w.end) for w in segments[0].words] == [(2.0, 2.7), (2.7, 3.0)]
    assert [(w.start, w.end) for w in segments[1].words] == [(10.1, 11.0)]


def test_vad_finds_no_speech_in_noise_and_a_tone():
    speech, time_map = vad.remove_non_speech(_silence_and_tone())
    assert len(speech) == 0 and time_map.spans == ()


def test_no_speech_gives_empty_valid_files(tiny_en_model_dir, tmp_path, capsys):
    audio = str(tmp_path / "no_speech.wav")
    sf.write(audio, _silence_and_tone(), SAMPLE_RATE)
    main = _main()
    for ext, expected in (("srt", ""), ("vtt", "WEBVTT\n"), ("txt", "\n")):
        out = str(tmp_path / f"out.{ext}")
        assert main(["--hf_model", tiny_en_model_dir, "--path_to_audio", audio, "--vad", "True", "--output", out]) == 0
        assert open(out, encoding="utf-8").read() == expected
    capsys.readouterr()
    assert main(["--hf_model", tiny_en_model_dir, "--path_to_audio", audio, "--vad", "True", "--timestamps",
                 "True", "--output", str(tmp_path / "out.json")]) == 0
    data = json.load(open(tmp_path / "out.json", encoding="utf-8"))
    assert data["text"] == "" and data["segments"] == [] and data["speech_seconds"] == 0
    assert data["duration"] == pytest.approx(20.0) and data["vad"] is True
    assert f"no speech found in {audio}: the transcript is empty" in capsys.readouterr().err


def test_vad_finds_the_speech_of_long_en(shared_data_dir):
    audio = load_audio(os.path.join(shared_data_dir, "longform", "long_en.flac"))
    quiet = np.zeros(10 * SAMPLE_RATE, dtype=np.float32)
    spans = vad.speech_spans(np.concatenate([audio[:40 * SAMPLE_RATE], quiet, audio[40 * SAMPLE_RATE:]]))
    assert len(spans) >= 2 and all(a < b <= c for (a, b), (c, _) in zip(spans, spans[1:]))
    speech = sum(b - a for a, b in spans) / SAMPLE_RATE
    assert 70 < speech < 81  # the 80 s of sentences with short pauses, not the 10 s inserted
    inside = [a for a, b in spans if 40.5 * SAMPLE_RATE < a < 49.5 * SAMPLE_RATE]
    assert not inside


# --- words ---------------------------------------------------------------------------------------------------


def test_words_are_split_at_spaces_and_end_where_the_next_token_starts(tiny_en_model_dir):
    from whisper_finetune.model.loading import load_processor

    tokenizer = load_processor(tiny_en_model_dir).tokenizer
    begin, end = tokenizer.convert_tokens_to_ids(["<|0.00|>", "<|2.00|>"])
    text = tokenizer.encode(" big cat.", add_special_tokens=False)  # one token per byte: " ", "b", "i", ...
    tokens = [begin, *text, end]
    times = [0.0] + [0.1 * (i + 1) for i in range(len(text))] + [1.5]
    words = transcription.words_of(tokens, times, tokenizer, 0.0, 1.2)
    assert words == (Word("big", 0.1, 0.5), Word("cat.", 0.5, 1.2))  # "cat." ends at <|2.00|>'s 1.5, held to 1.2


# --- real model ----------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.real_model
def test_tiny_en_on_timestamps_gives_sentence_cues_with_words(real_model_dir, shared_data_dir, tmp_path, capsys):
    long_audio = os.path.join(shared_data_dir, "longform", "long_en.flac")
    out = str(tmp_path / "long.json")
    assert _main()(["--hf_model", real_model_dir, "--path_to_audio", long_audio, "--timestamps", "True",
                    "--word_timestamps", "True", "--output", out]) == 0
    printed = capsys.readouterr().out.strip()
    data = json.load(open(out, encoding="utf-8"))
    segments = data["segments"]
    assert data["segmentation"] == TIMESTAMPS and data["text"] == printed
    assert len(segments) >= 10  # about one cue per sentence (21 measured), not one per 30 s
    assert all(0 < s["end"] - s["start"] <= 15 for s in segments)
    assert all(a["end"] <= b["start"] for a, b in zip(segments, segments[1:]))
    assert segments[-1]["end"] <= data["duration"] == pytest.approx(80.18, abs=0.01) and segments[-1]["end"] > 70
    english = get_normalizer("english")
    reference = open(os.path.join(shared_data_dir, "longform", "long_en.txt"), encoding="utf-8").read()
    assert jiwer.wer(english(reference), english(printed)) < 0.15  # 0.083 measured (cut at silence: 0.069)
    for segment in segments:
        words = segment["words"]
        assert " ".join(w["word"] for w in words) == segment["text"]
        assert all(segment["start"] <= w["start"] <= w["end"] <= segment["end"] for w in words)
        assert all(a["start"] <= b["start"] for a, b in zip(words, words[1:]))
        # the first word starts when the sentence does, not at the cue's start (the pause before it)
        assert words[0]["start"] - segment["start"] < 1.0 and words[-1]["end"] - words[0]["start"] > 1.0


@pytest.mark.slow
@pytest.mark.real_model
def test_vad_removes_an_inserted_silence_and_maps_the_cues_back(real_model_dir, shared_data_dir, tmp_path):
    audio = load_audio(os.path.join(shared_data_dir, "longform", "long_en.flac"))[:22 * SAMPLE_RATE]
    # Insert 15 s of silence in the pause nearest 11 s (the quietest 100 ms between 10 and 12 s).
    frames = audio[10 * SAMPLE_RATE:12 * SAMPLE_RATE].reshape(-1, SAMPLE_RATE // 10)
    cut = 10 * SAMPLE_RATE + int(np.argmin(np.square(frames).mean(axis=1))) * SAMPLE_RATE // 10 + SAMPLE_RATE // 20
    gap = 15.0
    path = str(tmp_path / "gap.flac")
    sf.write(path, np.concatenate([audio[:cut], np.zeros(int(gap * SAMPLE_RATE), np.float32), audio[cut:]]),
             SAMPLE_RATE)
    out = str(tmp_path / "gap.json")
    assert _main()(["--hf_model", real_model_dir, "--path_to_audio", path, "--timestamps", "True", "--vad", "True",
                    "--output", out]) == 0
    data = json.load(open(out, encoding="utf-8"))
    segments, cut_s = data["segments"], cut / SAMPLE_RATE
    assert data["speech_seconds"] < 23 and data["duration"] == pytest.approx(22 + gap, abs=0.01)
    before = [s for s in segments if s["end"] <= cut_s + 0.5]
    after = [s for s in segments if s["start"] >= cut_s + gap - 0.5]
    assert len(before) + len(after) == len(segments) and len(before) >= 2 and len(after) >= 2
    assert after[-1]["end"] <= 22 + gap


@pytest.mark.slow
@pytest.mark.real_model
def test_guards_on_a_short_batch(real_model_dir, shared_data_dir):
    from whisper_finetune.model.loading import load_processor

    folder = os.path.join(shared_data_dir, "espeak_en", "eval")
    paths = [os.path.join(folder, line.split()[1]) for line in open(os.path.join(folder, "audio_paths"))][:4]
    clips = [load_audio(p) for p in paths] + [(0.003 * np.random.default_rng(0).standard_normal(10 * SAMPLE_RATE))
                                              .astype(np.float32)]
    features = load_processor(real_model_dir).feature_extractor(clips, sampling_rate=SAMPLE_RATE,
                                                                return_tensors="np").input_features
    plain = make_decoder(prepared_for(real_model_dir), "cpu")
    default = plain.decode(features)
    # today's decoding, as transformers' generate gives it with no guard argument at all
    import torch

    with torch.inference_mode():
        tokens = plain.model.generate(torch.from_numpy(features), max_new_tokens=128, num_beams=1,
                                      return_timestamps=False)
    assert default == [t.strip() for t in plain.processor.batch_decode(tokens, skip_special_tokens=True)]
    assert default[-1]  # stock tiny.en writes something for pure noise (" you")
    guarded = make_decoder(prepared_for(real_model_dir, options=DecodingOptions(guards=WHISPER_GUARDS)),
                           "cpu").decode(features)
    assert guarded[-1] == ""  # skipped as no speech
    assert sum(a == b for a, b in zip(default[:-1], guarded[:-1])) >= 3  # speech: a fallback may resample one


@pytest.mark.real_model
def test_a_window_skipped_as_silence_stays_skipped_in_a_batch(real_model_dir):
    """Two windows of music-like tones: the first is skipped as silence at temperature 0, the second falls back
    to sampling. transformers' batched fallback un-skips the first ("So"); we decode such batches window by
    window, so the batch gives what each window gives alone."""
    from whisper_finetune.model.loading import load_processor
    from whisper_finetune.testing import no_speech_audio

    tones = no_speech_audio("tones", 60, seed=0)
    cut = int(29.99 * SAMPLE_RATE)  # where cutting at silence cuts it (bench/hallucination.py's tones)
    windows = [tones[:cut], tones[cut:int(56.2 * SAMPLE_RATE)]]
    features = load_processor(real_model_dir).feature_extractor(windows, sampling_rate=SAMPLE_RATE,
                                                                return_tensors="np").input_features
    decoder = make_decoder(prepared_for(real_model_dir, options=DecodingOptions(guards=WHISPER_GUARDS)), "cpu")
    assert not WHISPER_GUARDS.batch_safe()
    alone = [decoder.decode(features[i:i + 1])[0] for i in range(2)]
    assert alone[0] == ""  # skipped as no speech
    assert decoder.decode(features) == alone  # batched by transformers alone: ["So", "."]
    # the unguarded tiny.en writes a word into the first window, so the skip is the guard's doing
    assert make_decoder(prepared_for(real_model_dir), "cpu").decode(features[:1])[0] != ""

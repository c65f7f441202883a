"""custom_data/data_prep.py --format common_voice|audiofolder|nemo|lhotse: each format gives the dataset its
equivalent Kaldi folder gives (rows, texts byte for byte, durations, speakers, languages, audio), and every
bad input is reported with the same check, naming the entry."""
import csv
import dataclasses
import json
import logging
import os
import re

import datasets
import numpy as np
import pytest
import soundfile as sf

from conftest import decoded_rows, run_script
from whisper_finetune.data.config import DataPrepConfig
from whisper_finetune.data.corpus import prepare_dataset
from whisper_finetune.data.formats import common_voice_language
from whisper_finetune.data.loading import PREP_INFO_FILE, source_format
from whisper_finetune.errors import DataValidationError, OptionError, UserError
from whisper_finetune.testing import synthetic_speech

SCRIPT = "custom_data/data_prep.py"
CV_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
              "gender", "accents", "variant", "locale", "segment"]
LHOTSE_NAMES = {"en": "English", "hi": "Hindi"}  # Lhotse manifests often hold language names


@dataclasses.dataclass
class Clip:
    """One utterance of the test corpora. Whole-file formats write it as its own file; NeMo (with offsets) and
    Lhotse cut it from ``recording`` at ``offset``."""

    uid: str
    text: str
    seconds: float
    language: str
    speaker: str
    recording: str
    offset: float
    audio: str = "ok"  # "missing": the file is removed after the corpus is written; "garbage": not audio


# Texts byte for byte: a leading quote mark (a Common Voice .tsv has no quoting), an apostrophe and a comma
# (CSV quoting), Devanagari with vowel signs, virama and candrabindu.
CLIPS = [
    Clip("clip_0", '"Quoted," she said, "and kept."', 1.0, "en", "spk_a", "recA", 0.5),
    Clip("clip_1", "मैं दिल्ली में रहता हूँ।", 1.2, "hi", "spk_b", "recA", 2.0),
    Clip("clip_2", "it's a dog, in the park", 1.4, "en", "spk_a", "recB", 0.5),
    Clip("clip_3", "क्या आप हिंदी बोलते हैं?", 1.1, "hi", "spk_b", "recB", 2.2),
]
RECORDING_SECONDS = 4.0  # at least: a longer clip makes its recording longer
AUDIOFOLDER_FILES = ["clip_0.wav", "clip_1.wav", "more/clip_2.flac", "more/clip_3.mp3"]  # a subfolder, three codecs


@dataclasses.dataclass(frozen=True)
class Row:
    """What a format's corpus must become: the rows its equivalent Kaldi folder gives."""

    uid: str
    text: str
    path: str  # absolute
    speaker: str = None
    language: str = None
    recording_id: str = None
    start: float = None
    end: float = None


def _write_audio(path, seconds, seed, rate=16000):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, synthetic_speech(seconds, rate, seed=seed), rate)


def _write_recordings(folder, clips, suffixes={"recA": "wav", "recB": "flac"}):
    """``audio/<recording>.<wav|flac>`` holding every clip of that recording; returns {recording: relative path}."""
    paths = {}
    for seed, rid in enumerate(suffixes):
        seconds = max([RECORDING_SECONDS] + [c.offset + c.seconds + 0.5 for c in clips
                                             if c.recording == rid and c.seconds > 30])
        paths[rid] = f"audio/{rid}.{suffixes[rid]}"
        _write_audio(os.path.join(folder, paths[rid]), seconds, seed)
    return paths


def _break_audio(folder, relative_paths):
    """Apply each clip's ``audio`` mark to its file, once the corpus is written."""
    for clip, relative in relative_paths:
        path = os.path.join(folder, relative)
        if clip.audio == "missing" and os.path.exists(path):
            os.remove(path)
        elif clip.audio == "garbage":
            with open(path, "wb") as f:
                f.write(b"this is not audio at all" * 10)


def write_common_voice(folder, clips):
    """A Common Voice release: train.tsv (written with tabs and no quoting, as Common Voice does) and clips/*.mp3."""
    for i, clip in enumerate(clips):
        path = os.path.join(folder, "clips", f"{clip.uid}.mp3")
        if not os.path.exists(path):
            _write_audio(path, clip.seconds, int(clip.uid[-1]), rate=48000)
    lines = ["\t".join(CV_COLUMNS)]
    for clip in clips:
        values = {"client_id": clip.speaker, "path": f"{clip.uid}.mp3", "sentence_id": "f00d", "sentence": clip.text,
                  "up_votes": "2", "down_votes": "0", "locale": clip.language}
        lines.append("\t".join(values.get(c, "") for c in CV_COLUMNS))
    with open(os.path.join(folder, "train.tsv"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    _break_audio(folder, [(c, f"clips/{c.uid}.mp3") for c in clips])
    return [Row(c.uid, c.text, os.path.join(folder, "clips", f"{c.uid}.mp3"), c.speaker, c.language) for c in clips]


def _audiofolder_rows(folder, clips):
    files = dict(zip([c.uid for c in CLIPS], AUDIOFOLDER_FILES))
    for clip in clips:
        if not os.path.exists(os.path.join(folder, files[clip.uid])):
            _write_audio(os.path.join(folder, files[clip.uid]), clip.seconds, int(clip.uid[-1]))
    _break_audio(folder, [(c, files[c.uid]) for c in clips])
    rows = [{"file_name": files[c.uid], "transcription": c.text, "speaker_id": c.speaker, "language": c.language}
            for c in clips]
    return rows, [Row(os.path.splitext(files[c.uid])[0], c.text, os.path.join(folder, files[c.uid]), c.speaker,
                      c.language) for c in clips]


def write_audiofolder_csv(folder, clips):
    rows, expected = _audiofolder_rows(folder, clips)
    with open(os.path.join(folder, "metadata.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return expected


def write_audiofolder_jsonl(folder, clips):
    rows, expected = _audiofolder_rows(folder, clips)
    with open(os.path.join(folder, "metadata.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return expected


def write_nemo(folder, clips):
    """A NeMo manifest (train.json) whose entries cut the clips from their recordings with offset + duration."""
    paths = _write_recordings(folder, clips)
    with open(os.path.join(folder, "train.json"), "w", encoding="utf-8") as f:
        for clip in clips:
            f.write(json.dumps({"audio_filepath": paths[clip.recording], "text": clip.text, "offset": clip.offset,
                                "duration": clip.seconds, "lang": clip.language}, ensure_ascii=False) + "\n")
    _break_audio(folder, [(c, paths[c.recording]) for c in clips])

    def ms(seconds):
        return f"{round(seconds * 1000):07d}"

    return [Row(f"audio/{c.recording}-{ms(c.offset)}-{ms(c.offset + c.seconds)}", c.text,
                os.path.join(folder, paths[c.recording]), language=c.language, recording_id=f"audio/{c.recording}",
                start=c.offset, end=round(c.offset + c.seconds, 6)) for c in clips]


def write_nemo_files(folder, clips):
    """A NeMo manifest without offsets: each entry is its whole file (audio/<uid>.wav)."""
    with open(os.path.join(folder, "train.json"), "w", encoding="utf-8") as f:
        for clip in clips:
            path = os.path.join(folder, "audio", f"{clip.uid}.wav")
            if not os.path.exists(path):
                _write_audio(path, clip.seconds, int(clip.uid[-1]))
            f.write(json.dumps({"audio_filepath": f"audio/{clip.uid}.wav", "text": clip.text,
                                "duration": clip.seconds, "lang": clip.language}, ensure_ascii=False) + "\n")
    _break_audio(folder, [(c, f"audio/{c.uid}.wav") for c in clips])
    return [Row(f"audio/{c.uid}", c.text, os.path.join(folder, "audio", f"{c.uid}.wav"), language=c.language)
            for c in clips]


def _lhotse_manifests(folder, clips):
    """Recordings (relative sources: Lhotse opens them from the current folder) and supervisions, by lhotse's API."""
    from lhotse import Recording, RecordingSet, SupervisionSegment, SupervisionSet

    paths = _write_recordings(folder, clips)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        recordings = RecordingSet.from_recordings(Recording.from_file(paths[rid], recording_id=rid) for rid in paths)
    finally:
        os.chdir(cwd)
    supervisions = SupervisionSet.from_segments(
        SupervisionSegment(c.uid, c.recording, c.offset, c.seconds, text=c.text, speaker=c.speaker,
                           language=LHOTSE_NAMES.get(c.language, c.language)) for c in clips)
    expected = [Row(c.uid, c.text, os.path.join(folder, paths[c.recording]), c.speaker, c.language, c.recording,
                    c.offset, round(c.offset + c.seconds, 6)) for c in clips]
    return recordings, supervisions, paths, expected


def write_lhotse_cuts(folder, clips):
    from lhotse import CutSet

    recordings, supervisions, paths, expected = _lhotse_manifests(folder, clips)
    CutSet.from_manifests(recordings=recordings, supervisions=supervisions).to_file(
        os.path.join(folder, "cuts.jsonl.gz"))
    _break_audio(folder, [(c, paths[c.recording]) for c in clips])
    return expected


def write_lhotse_pair(folder, clips):
    recordings, supervisions, paths, expected = _lhotse_manifests(folder, clips)
    recordings.to_file(os.path.join(folder, "recordings.jsonl.gz"))
    supervisions.to_file(os.path.join(folder, "supervisions.jsonl.gz"))
    _break_audio(folder, [(c, paths[c.recording]) for c in clips])
    return expected


# format name -> (writer, --format, whether rows are segments of recordings)
WRITERS = {
    "common_voice": (write_common_voice, "common_voice", False),
    "audiofolder_csv": (write_audiofolder_csv, "audiofolder", False),
    "audiofolder_jsonl": (write_audiofolder_jsonl, "audiofolder", False),
    "nemo": (write_nemo, "nemo", True),
    "nemo_files": (write_nemo_files, "nemo", False),
    "lhotse_cuts": (write_lhotse_cuts, "lhotse", True),
    "lhotse_pair": (write_lhotse_pair, "lhotse", True),
}


def write_kaldi(folder, rows, segments):
    """The equivalent Kaldi folder: text, audio_paths (or wav.scp + segments), utt2spk, languages."""
    os.makedirs(folder)
    files = {"text": [f"{r.uid} {r.text}" for r in rows]}
    if segments:
        recordings = {r.recording_id: r.path for r in rows}
        files["wav.scp"] = [f"{rid} {path}" for rid, path in recordings.items()]
        files["segments"] = [f"{r.uid} {r.recording_id} {r.start} {r.end}" for r in rows]
    else:
        files["audio_paths"] = [f"{r.uid} {r.path}" for r in rows]
    if rows[0].speaker:
        files["utt2spk"] = [f"{r.uid} {r.speaker}" for r in rows]
    files["languages"] = [f"{r.uid} {r.language}" for r in rows]
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return folder


def prep(source, out, **kwargs):
    return prepare_dataset(DataPrepConfig(source_data_dir=str(source), output_data_dir=str(out), **kwargs))


def build(tmp_path, name, clips=CLIPS):
    """Write ``name``'s corpus of ``clips`` into tmp_path/src; returns (folder, --format, expected rows, segments)."""
    writer, fmt, segments = WRITERS[name]
    folder = str(tmp_path / "src")
    os.makedirs(folder, exist_ok=True)
    return folder, fmt, writer(folder, [dataclasses.replace(c) for c in clips]), segments


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path/src (Lhotse's relative sources are opened from the current folder)."""
    os.makedirs(tmp_path / "src")
    monkeypatch.chdir(tmp_path / "src")
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Each format gives what its equivalent Kaldi folder gives
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(WRITERS))
def test_each_format_gives_the_dataset_of_its_equivalent_kaldi_folder(in_tmp, name, caplog):
    tmp_path = in_tmp
    folder, fmt, expected, segments = build(tmp_path, name)
    with caplog.at_level(logging.INFO, logger="whisper_finetune.data.formats"):
        summary = prep(folder, tmp_path / "out")  # the format is detected
    assert f"detected format: {fmt} (" in caplog.text
    prep(write_kaldi(str(tmp_path / "kaldi"), expected, segments), tmp_path / "kaldi_out")
    ours, kaldi = (datasets.load_from_disk(str(tmp_path / d)) for d in ("out", "kaldi_out"))
    assert ours.column_names == kaldi.column_names
    assert ("recording_id" in ours.column_names) == segments
    assert ("speaker" in ours.column_names) == (expected[0].speaker is not None)
    for column in ours.column_names:
        if column != "audio":
            assert ours[column] == kaldi[column], column
    for a, b in zip(decoded_rows(ours), decoded_rows(kaldi)):
        assert a["audio"]["sampling_rate"] == 16000 and np.array_equal(a["audio"]["array"], b["audio"]["array"])
    # the texts byte for byte, the languages as Whisper codes, segments ordered by recording and start
    by_id = {r.uid: r for r in expected}
    assert sorted(ours["id"]) == sorted(by_id)
    assert [by_id[uid].text.encode("utf-8") for uid in ours["id"]] == [t.encode("utf-8") for t in ours["sentence"]]
    assert ours["language"] == [by_id[uid].language for uid in ours["id"]] and set(ours["language"]) == {"en", "hi"}
    assert ours["sentence"][0] == '"Quoted," she said, "and kept."'
    assert summary.kept == 4 and summary.source_format == fmt and f"source format: {fmt}" in str(summary)
    assert source_format(str(tmp_path / "out")) == fmt and source_format(str(tmp_path / "kaldi_out")) == "kaldi"


def test_durations_are_the_clips(in_tmp):
    folder, _, expected, _ = build(in_tmp, "nemo")
    prep(folder, in_tmp / "out")
    ds = datasets.load_from_disk(str(in_tmp / "out"))
    seconds = {f"audio/{c.recording}-{round(c.offset * 1000):07d}-{round((c.offset + c.seconds) * 1000):07d}":
               c.seconds for c in CLIPS}
    assert ds["duration"] == pytest.approx([seconds[uid] for uid in ds["id"]], abs=1e-4)
    assert ds["start"] == [0.5, 2.0, 0.5, 2.2] and ds["recording_id"] == ["audio/recA"] * 2 + ["audio/recB"] * 2


# ---------------------------------------------------------------------------------------------
# Every bad input, reported by the same check, naming the entry
# ---------------------------------------------------------------------------------------------
def _break(case, clips):
    """``clips`` with the third clip (clip_2) broken as ``case`` says."""
    clip = clips[2]
    if case == "missing audio":
        clip.audio = "missing"
    elif case == "unreadable audio":
        clip.audio = "garbage"
    elif case == "empty transcription":
        clip.text = ""
    elif case == "longer than 30 s":
        clip.seconds = 31.0
    elif case == "duplicate id":
        clips.append(dataclasses.replace(clip))
    elif case == "unknown language":
        clip.language = "tlh"  # Klingon: Whisper has no such language
    elif case == "bad offset":
        clip.offset = 3.5  # ends at 4.9 s, past the end of its 4 s recording
    return clips


CV = "id clip_2 (train.tsv line 4)"
CSV = "id more/clip_2 (metadata.csv line 4)"
JSONL = "id more/clip_2 (metadata.jsonl line 3)"
NEMO = "id audio/recB-0000500-0001900 (train.json line 3)"
FILES = "id audio/clip_2 (train.json line 3)"
CUTS = "id clip_2 (cuts.jsonl.gz line 2)"
PAIR = "id clip_2 (supervisions.jsonl.gz line 3)"
LANGUAGE = "unknown language 'tlh'; use a Whisper language code or name (en, hi, Hindi...)"
# (format, case, the exact message)
BAD_INPUTS = [
    ("common_voice", "missing audio", f"{CV}: audio file clips/clip_2.mp3 not found"),
    ("common_voice", "unreadable audio", f"{CV}: audio file clips/clip_2.mp3 is not readable audio"),
    ("common_voice", "empty transcription", f"{CV}: empty transcription"),
    ("common_voice", "longer than 30 s", f"{CV}: 31.0 s is longer than Whisper's 30 s window"),
    ("common_voice", "duplicate id", "train.tsv line 6: id clip_2 repeats train.tsv line 4"),
    ("common_voice", "unknown language", f"{CV}: {LANGUAGE}"),
    ("audiofolder_csv", "missing audio", f"{CSV}: audio file more/clip_2.flac not found"),
    ("audiofolder_csv", "unreadable audio", f"{CSV}: audio file more/clip_2.flac is not readable audio"),
    ("audiofolder_csv", "empty transcription", f"{CSV}: empty transcription"),
    ("audiofolder_csv", "longer than 30 s", f"{CSV}: 31.0 s is longer than Whisper's 30 s window"),
    ("audiofolder_csv", "duplicate id", "metadata.csv line 6: id more/clip_2 repeats metadata.csv line 4"),
    ("audiofolder_csv", "unknown language", f"{CSV}: {LANGUAGE}"),
    ("audiofolder_jsonl", "missing audio", f"{JSONL}: audio file more/clip_2.flac not found"),
    ("audiofolder_jsonl", "unreadable audio", f"{JSONL}: audio file more/clip_2.flac is not readable audio"),
    ("audiofolder_jsonl", "empty transcription", f"{JSONL}: empty transcription"),
    ("audiofolder_jsonl", "longer than 30 s", f"{JSONL}: 31.0 s is longer than Whisper's 30 s window"),
    ("audiofolder_jsonl", "duplicate id", "metadata.jsonl line 5: id more/clip_2 repeats metadata.jsonl line 3"),
    ("audiofolder_jsonl", "unknown language", f"{JSONL}: {LANGUAGE}"),
    ("nemo", "missing audio", f"{NEMO}: audio file audio/recB.flac not found"),
    ("nemo", "unreadable audio", f"{NEMO}: audio file audio/recB.flac is not readable audio"),
    ("nemo", "empty transcription", f"{NEMO}: empty transcription"),
    ("nemo", "longer than 30 s", "id audio/recB-0000500-0031500 (train.json line 3): 31.0 s is longer than "
                                 "Whisper's 30 s window"),
    ("nemo", "duplicate id", "train.json line 5: id audio/recB-0000500-0001900 repeats train.json line 3"),
    ("nemo", "unknown language", f"{NEMO}: {LANGUAGE}"),
    ("nemo", "bad offset", "id audio/recB-0003500-0004900 (train.json line 3): end 4.9 s is beyond the end of "
                           "recording audio/recB (4.00 s)"),
    ("nemo_files", "missing audio", f"{FILES}: audio file audio/clip_2.wav not found"),
    ("nemo_files", "unreadable audio", f"{FILES}: audio file audio/clip_2.wav is not readable audio"),
    ("nemo_files", "empty transcription", f"{FILES}: empty transcription"),
    ("nemo_files", "longer than 30 s", f"{FILES}: 31.0 s is longer than Whisper's 30 s window"),
    ("nemo_files", "duplicate id", "train.json line 5: id audio/clip_2 repeats train.json line 3"),
    ("nemo_files", "unknown language", f"{FILES}: {LANGUAGE}"),
    ("lhotse_cuts", "missing audio", f"{CUTS}: audio file audio/recB.flac not found"),
    ("lhotse_cuts", "unreadable audio", f"{CUTS}: audio file audio/recB.flac is not readable audio"),
    ("lhotse_cuts", "empty transcription", f"{CUTS}: empty transcription"),
    ("lhotse_cuts", "longer than 30 s", f"{CUTS}: 31.0 s is longer than Whisper's 30 s window"),
    ("lhotse_cuts", "duplicate id", "cuts.jsonl.gz line 2: id clip_2 repeats cuts.jsonl.gz line 2"),
    ("lhotse_cuts", "unknown language", f"{CUTS}: {LANGUAGE}"),
    ("lhotse_cuts", "bad offset", f"{CUTS}: end 4.9 s is beyond the end of recording recB (4.00 s)"),
    ("lhotse_pair", "missing audio", f"{PAIR}: audio file audio/recB.flac not found"),
    ("lhotse_pair", "unreadable audio", f"{PAIR}: audio file audio/recB.flac is not readable audio"),
    ("lhotse_pair", "empty transcription", f"{PAIR}: empty transcription"),
    ("lhotse_pair", "longer than 30 s", f"{PAIR}: 31.0 s is longer than Whisper's 30 s window"),
    ("lhotse_pair", "duplicate id", "supervisions.jsonl.gz line 5: id clip_2 repeats supervisions.jsonl.gz line 3"),
    ("lhotse_pair", "unknown language", f"{PAIR}: {LANGUAGE}"),
    ("lhotse_pair", "bad offset", f"{PAIR}: end 4.9 s is beyond the end of recording recB (4.00 s)"),
]


@pytest.mark.parametrize("name,case,message", BAD_INPUTS, ids=[f"{b[0]}-{b[1]}" for b in BAD_INPUTS])
def test_bad_input_is_refused_naming_the_entry(in_tmp, name, case, message):
    folder, fmt, _, _ = build(in_tmp, name, _break(case, [dataclasses.replace(c) for c in CLIPS]))
    with pytest.raises(DataValidationError, match=re.escape(message)) as info:
        prep(folder, in_tmp / "out", format=fmt)
    assert message in info.value.problems
    assert not os.path.exists(in_tmp / "out") and not [p for p in os.listdir(in_tmp) if p.startswith(".")]


# The same breaks in the equivalent Kaldi folder (listing the same files): after the entry's place, the same text.
@pytest.mark.parametrize("case,tail", [("empty transcription", "empty transcription"),
                                       ("longer than 30 s", "31.0 s is longer than Whisper's 30 s window"),
                                       ("unreadable audio", "is not readable audio"),
                                       ("missing audio", "not found")])
def test_the_kaldi_reader_reports_the_same_problems(in_tmp, case, tail):
    folder, _, expected, _ = build(in_tmp, "common_voice", _break(case, [dataclasses.replace(c) for c in CLIPS]))
    with pytest.raises(DataValidationError) as ours:
        prep(folder, in_tmp / "out")
    with pytest.raises(DataValidationError) as kaldi:
        prep(write_kaldi(str(in_tmp / "kaldi"), expected, False), in_tmp / "kaldi_out")
    [ours_message], [kaldi_message] = ours.value.problems, kaldi.value.problems
    assert ours_message.startswith("id clip_2 (train.tsv line 4): ") and ours_message.endswith(tail)
    assert kaldi_message.startswith("id clip_2 (text line 3, audio_paths line 3): ") and kaldi_message.endswith(tail)


@pytest.mark.parametrize("name", ["common_voice", "lhotse_pair"])
def test_skip_invalid_drops_and_lists(in_tmp, name):
    folder, _, _, _ = build(in_tmp, name, _break("empty transcription", [dataclasses.replace(c) for c in CLIPS]))
    summary = prep(folder, in_tmp / "out", skip_invalid=True)
    ds = datasets.load_from_disk(str(in_tmp / "out"))
    assert "clip_2" not in ds["id"] and ds.num_rows == summary.kept == 3
    assert "empty transcription: 1" in str(summary)


# ---------------------------------------------------------------------------------------------
# Format specifics
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("locale,code", [("hi", "hi"), ("en", "en"), ("pa-IN", "pa"), ("zh-CN", "zh"), ("zh-TW", "zh"),
                                         ("sv-SE", "sv"), ("nn-NO", "nn"), ("yue", "yue"), ("ga-IE", "ga-IE"),
                                         ("nan-tw", "nan-tw")])
def test_common_voice_locales_map_to_whisper_codes(locale, code):
    assert common_voice_language(locale) == code  # a locale Whisper lacks is left for the language check


def test_common_voice_locale_whisper_lacks_is_named(in_tmp):
    clips = [dataclasses.replace(c, language="ga-IE" if c.uid == "clip_1" else c.language) for c in CLIPS]
    folder, _, _, _ = build(in_tmp, "common_voice", clips)
    with pytest.raises(DataValidationError) as info:
        prep(folder, in_tmp / "out")
    assert info.value.problems == ["id clip_1 (train.tsv line 3): unknown language 'ga-IE'; use a Whisper language "
                                   "code or name (en, hi, Hindi...)"]


def test_common_voice_several_splits_in_order_with_workers_and_shards(in_tmp):
    folder, _, _, _ = build(in_tmp, "common_voice")
    with open(os.path.join(folder, "train.tsv"), encoding="utf-8") as f:
        header, *lines = f.read().splitlines()
    for split, part in (("train", lines[:3]), ("dev", lines[3:])):
        with open(os.path.join(folder, f"{split}.tsv"), "w", encoding="utf-8") as f:
            f.write("\n".join([header] + part) + "\n")
    prep(folder, in_tmp / "train_only", split=("train",))
    assert datasets.load_from_disk(str(in_tmp / "train_only"))["id"] == ["clip_0", "clip_1", "clip_2"]
    prep(folder, in_tmp / "out", split=("dev", "train"), num_proc=2, num_shards=2)
    ds = datasets.load_from_disk(str(in_tmp / "out"))
    assert ds["id"] == ["clip_3", "clip_0", "clip_1", "clip_2"]
    assert len([f for f in os.listdir(in_tmp / "out") if f.endswith(".arrow")]) == 2
    with pytest.raises(OptionError, match=re.escape("--split test: no test.tsv in")):
        prep(folder, in_tmp / "out2", split=("test",))


def test_audiofolder_id_column_and_text_column(in_tmp):
    folder, _, _, _ = build(in_tmp, "audiofolder_jsonl")
    path = os.path.join(folder, "metadata.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    with open(path, "w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            row.update(id=f"utt-{i}", sentence=f"other {i}")
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with pytest.raises(UserError, match=re.escape("cannot tell which column holds the transcription (it has "
                                                  "transcription and sentence); name it with --text_column")):
        prep(folder, in_tmp / "out")
    prep(folder, in_tmp / "out", text_column="sentence")
    ds = datasets.load_from_disk(str(in_tmp / "out"))
    assert ds["id"] == ["utt-0", "utt-1", "utt-2", "utt-3"] and ds["sentence"][3] == "other 3"
    with pytest.raises(OptionError, match=re.escape("--text_column words: no such column in")):
        prep(folder, in_tmp / "out2", text_column="words")


def test_nemo_several_manifests_and_a_manifest_elsewhere(in_tmp):
    folder, _, expected, _ = build(in_tmp, "nemo")
    with open(os.path.join(folder, "train.json"), encoding="utf-8") as f:
        lines = f.readlines()
    os.makedirs(os.path.join(folder, "lists"))
    with open(os.path.join(folder, "a.json"), "w", encoding="utf-8") as f:
        f.writelines(lines[:2])
    with open(os.path.join(folder, "lists", "b.json"), "w", encoding="utf-8") as f:  # audio ../audio/recB.flac
        f.writelines(line.replace('"audio/', '"../audio/') for line in lines[2:])
    os.rename(os.path.join(folder, "train.json"), os.path.join(folder, "all.json"))
    with pytest.raises(UserError, match=re.escape(f"{folder}: cannot tell which manifests to read (found: a.json, "
                                                  f"all.json): name the NeMo manifest(s) with --manifest")):
        prep(folder, in_tmp / "out")
    prep(folder, in_tmp / "out", manifest=("a.json", "lists/b.json"))
    ds = datasets.load_from_disk(str(in_tmp / "out"))
    assert ds["id"] == [r.uid for r in expected] and ds["recording_id"] == ["audio/recA"] * 2 + ["audio/recB"] * 2


def test_lhotse_recordings_without_their_supervisions_manifest_is_refused(in_tmp):
    folder, _, _, _ = build(in_tmp, "lhotse_pair")
    with pytest.raises(OptionError, match=re.escape("--manifest recordings.jsonl.gz: give a Lhotse CutSet manifest, "
                                                    "or one RecordingSet and one SupervisionSet manifest (got "
                                                    "recordings.jsonl.gz (RecordingSet))")):
        prep(folder, in_tmp / "out", manifest=("recordings.jsonl.gz",))


def test_ambiguous_folder_and_options_of_another_format_are_one_line_errors(in_tmp):
    folder, _, _, _ = build(in_tmp, "common_voice")
    with open(os.path.join(folder, "metadata.csv"), "w", encoding="utf-8") as f:
        f.write("file_name,text\nclips/clip_0.mp3,hello\n")
    result = run_script(SCRIPT, "--source_data_dir", folder, "--output_data_dir", in_tmp / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: {folder} holds files of several corpus formats (common_voice: train.tsv, clips/; audiofolder: "
        f"metadata.csv): choose one with --format kaldi|common_voice|audiofolder|nemo|lhotse"]
    result = run_script(SCRIPT, "--source_data_dir", folder, "--output_data_dir", in_tmp / "out", "--format",
                        "common_voice", "--manifest", "a.json")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["error: --manifest a.json: only for --format nemo or lhotse (this corpus is "
                                          "common_voice)"]
    result = run_script(SCRIPT, "--source_data_dir", folder, "--output_data_dir", in_tmp / "out", "--format",
                        "common_voice")
    assert result.returncode == 0, result.stderr
    assert "source format: common_voice" in result.stdout and "utterances kept: 4" in result.stdout
    with open(os.path.join(in_tmp, "out", PREP_INFO_FILE), encoding="utf-8") as f:
        assert json.load(f) == {"source_format": "common_voice", "source_data_dir": folder}


# ---------------------------------------------------------------------------------------------
# The whole job on a Common Voice release
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # tens of seconds: the second tier
def test_common_voice_release_through_fine_tuning_and_evaluation(tiny_model_dir, in_tmp):
    """data_prep -> 2 training steps -> evaluation, as a user runs the scripts; the model card and the result
    files name the source format."""
    folder, _, _, _ = build(in_tmp, "common_voice")
    data, model, results = (str(in_tmp / name) for name in ("data", "model", "results"))
    prepared = run_script(SCRIPT, "--source_data_dir", folder, "--output_data_dir", data, "--split", "train")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "detected format: common_voice (train.tsv, clips/)" in prepared.stderr
    trained = run_script("train/fine-tune_on_custom_dataset.py", "--model_name", tiny_model_dir, "--language", "hi",
                         "--train_datasets", data, "--eval_datasets", data, "--train_strategy", "steps",
                         "--num_steps", 2, "--eval_steps", 2, "--train_batchsize", 2, "--eval_batchsize", 4,
                         "--generation_max_new_tokens", 4, "--logging_steps", 1, "--report_to", "none",
                         "--output_dir", model)
    assert trained.returncode == 0, trained.stderr[-3000:]
    with open(os.path.join(model, "training_summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["global_step"] == 2 and summary["source_formats"] == {data: "common_voice"}
    with open(os.path.join(model, "README.md"), encoding="utf-8") as f:
        card = f.read()
    assert "| role | dataset | source format | config | split |" in card
    assert f"| train | `{data}` | common_voice | - | - |" in card and f"| eval | `{data}` | common_voice |" in card
    evaluated = run_script("evaluate/evaluate_on_custom_dataset.py", "--hf_model", model, "--language", "hi",
                           "--eval_datasets", data, "--device", "-1", "--max_new_tokens", 4, "--num_workers", 0,
                           "--output_dir", results)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    [json_path] = [os.path.join(results, f) for f in os.listdir(results) if f.endswith(".json")]
    with open(json_path, encoding="utf-8") as f:
        result = json.load(f)
    assert result["source_format"] == "common_voice" and result["utterances"] == 4
    with open(json_path[:-5] + ".txt", encoding="utf-8") as f:
        text = f.read()
    assert "# source_format: common_voice\n" in text
    assert "RAW_REF: मैं दिल्ली में रहता हूँ।" in text  # Devanagari kept through the whole job

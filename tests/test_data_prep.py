"""custom_data/data_prep.py: good corpora, every bad input, formats, atomic output."""
import glob
import logging
import os
import shutil

import datasets
import numpy as np
import pytest
import soundfile as sf

from conftest import decoded_rows, run_script, write_corpus
from whisper_finetune.data import corpus as data_mod
from whisper_finetune.audio import decode_example_audio, resample
from whisper_finetune.data.config import DataPrepConfig
from whisper_finetune.data.corpus import prepare_dataset
from whisper_finetune.errors import DataValidationError, UserError
from whisper_finetune.testing import synthetic_speech

SCRIPT = "custom_data/data_prep.py"


def prep(source, out, **kwargs):
    return prepare_dataset(DataPrepConfig(source_data_dir=str(source), output_data_dir=str(out), **kwargs))


def leftovers(parent):
    """Temporary folders data_prep may have left beside the output."""
    return [p for p in os.listdir(parent) if p.startswith(".")]


def test_good_corpus_rows_rate_durations_ids_text(tmp_path):
    source = write_corpus(str(tmp_path / "src"), n=5, sampling_rate=16000)
    summary = prep(source, tmp_path / "out")
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert ds.num_rows == 5 and summary.kept == 5
    assert ds.column_names == ["id", "audio", "sentence", "duration"]  # no segment columns without segments
    assert ds["id"] == [f"utt{i:04d}" for i in range(5)]
    assert ds["sentence"][1] == "a dog ran in the park"
    row = decoded_rows(ds)[3]
    assert row["audio"]["sampling_rate"] == 16000
    assert row["audio"]["array"].shape == (int(1.3 * 16000),)
    assert row["duration"] == pytest.approx(1.3, abs=1e-3)
    assert "total audio" in str(summary) and "min 1.00" in str(summary)


def test_audio_is_stored_inside_the_dataset(tmp_path):
    source = write_corpus(str(tmp_path / "src"), n=2)
    prep(source, tmp_path / "out")
    shutil.rmtree(source)
    ds = datasets.load_from_disk(str(tmp_path / "out")).cast_column("audio", datasets.Audio(decode=False))
    audio = decode_example_audio(ds[0]["audio"])
    expected = synthetic_speech(1.0, 16000, seed=0)
    assert np.abs(audio - expected).max() < 1e-3  # 16-bit PCM round trip


@pytest.mark.parametrize("rate,channels,fmt", [(44100, 2, "wav"), (8000, 1, "wav"), (48000, 1, "flac"),
                                               (22050, 1, "ogg"), (44100, 2, "mp3")])
def test_formats_rates_and_stereo_are_resampled_to_mono(tmp_path, rate, channels, fmt):
    source = write_corpus(str(tmp_path / "src"), n=2, sampling_rate=rate, channels=channels, fmt=fmt)
    prep(source, tmp_path / "out", sampling_rate=16000)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    for i, row in enumerate(decoded_rows(ds)):
        assert row["audio"]["array"].ndim == 1
        assert row["duration"] == pytest.approx(1.0 + 0.1 * i, abs=0.06)  # mp3 adds codec padding


def test_other_sampling_rate(tmp_path):
    source = write_corpus(str(tmp_path / "src"), n=2)
    prep(source, tmp_path / "out", sampling_rate=8000)
    row = decoded_rows(datasets.load_from_disk(str(tmp_path / "out")))[0]
    assert row["audio"]["sampling_rate"] == 8000 and row["audio"]["array"].shape == (8000,)


def test_absolute_and_relative_paths(tmp_path):
    for relative in (True, False):
        source = write_corpus(str(tmp_path / f"src{relative}"), n=3, relative=relative)
        prep(source, tmp_path / f"out{relative}")
        assert datasets.load_from_disk(str(tmp_path / f"out{relative}")).num_rows == 3


def test_num_proc_keeps_corpus_order(tmp_path):
    source = write_corpus(str(tmp_path / "src"), n=7)
    prep(source, tmp_path / "out", num_proc=2)
    assert datasets.load_from_disk(str(tmp_path / "out"))["id"] == [f"utt{i:04d}" for i in range(7)]


def _edit(path, transform):
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(transform(lines)) + "\n")


def _long_clip(source):
    sf.write(os.path.join(source, "audio", "utt0002.wav"), synthetic_speech(31, 16000), 16000)


def _garbage_clip(source):
    with open(os.path.join(source, "audio", "utt0002.wav"), "wb") as f:
        f.write(b"this is not audio at all" * 10)


# (name, how to break the corpus, text expected in the error)
BAD_INPUTS = [
    ("missing from audio_paths", lambda s: _edit(os.path.join(s, "audio_paths"), lambda l: l[:2] + l[3:]),
     "text line 3: id utt0002 has no entry in audio_paths"),
    ("missing from text", lambda s: _edit(os.path.join(s, "text"), lambda l: l[:2] + l[3:]),
     "audio_paths line 3: id utt0002 has no entry in text"),
    ("duplicate id", lambda s: _edit(os.path.join(s, "text"), lambda l: l + [l[2]]),
     "text line 6: id utt0002 repeats line 3"),
    ("out of order", lambda s: _edit(os.path.join(s, "text"), lambda l: [l[0], l[2], l[1]] + l[3:]),
     "text line 2: id utt0002"),
    ("empty transcription", lambda s: _edit(os.path.join(s, "text"), lambda l: l[:2] + ["utt0002"] + l[3:]),
     "id utt0002 (text line 3, audio_paths line 3): empty transcription"),
    ("missing audio", lambda s: os.remove(os.path.join(s, "audio", "utt0002.wav")),
     "id utt0002 (text line 3, audio_paths line 3): audio file audio/utt0002.wav not found"),
    ("unreadable audio", _garbage_clip, "id utt0002 (text line 3, audio_paths line 3): audio file audio/utt0002.wav "
                                        "is not readable audio"),
    ("longer than 30 s", _long_clip, "id utt0002 (text line 3, audio_paths line 3): 31.0 s is longer than"),
]


@pytest.mark.parametrize("name,breaker,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_refused_naming_the_utterance(tmp_path, name, breaker, message):
    source = write_corpus(str(tmp_path / "src"), n=5)
    breaker(source)
    with pytest.raises(DataValidationError) as info:
        prep(source, tmp_path / "out")
    assert message in str(info.value)
    assert not os.path.exists(tmp_path / "out") and not leftovers(tmp_path)


@pytest.mark.parametrize("name,breaker,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_skip_invalid_drops_and_lists(tmp_path, name, breaker, message):
    source = write_corpus(str(tmp_path / "src"), n=5)
    breaker(source)
    summary = prep(source, tmp_path / "out", skip_invalid=True)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert message in str(summary)
    if name == "out of order":  # nothing is invalid once matched by id; the order problem is reported
        assert ds.num_rows == 5
    else:
        assert "utt0002" not in ds["id"] and ds.num_rows == summary.kept >= 4


def test_script_exits_nonzero_with_one_line_per_problem_and_no_output(tmp_path):
    source = write_corpus(str(tmp_path / "src"), n=5)
    _long_clip(source)
    os.remove(os.path.join(source, "audio", "utt0004.wav"))
    result = run_script(SCRIPT, "--source_data_dir", source, "--output_data_dir", tmp_path / "out")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "2 problem(s)" in result.stderr and "utt0002" in result.stderr and "utt0004" in result.stderr
    assert not os.path.exists(tmp_path / "out")


def test_invalid_utf8_is_a_clear_error(tmp_path):
    source = write_corpus(str(tmp_path / "src"), n=3)
    with open(os.path.join(source, "text"), "ab") as f:
        f.write(b"utt0003 caf\xe9 au lait\n")
    result = run_script(SCRIPT, "--source_data_dir", source, "--output_data_dir", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "line 4: not valid UTF-8" in result.stderr
    assert not os.path.exists(tmp_path / "out")


def test_missing_source_files(tmp_path):
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="no such file"):
        prep(tmp_path / "empty", tmp_path / "out")


def test_refuses_to_overwrite_unless_asked(tmp_path):
    source = write_corpus(str(tmp_path / "src"), n=2)
    prep(source, tmp_path / "out")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        prep(source, tmp_path / "out")
    write_corpus(source, n=3)
    prep(source, tmp_path / "out", overwrite=True)
    assert datasets.load_from_disk(str(tmp_path / "out")).num_rows == 3
    assert not leftovers(tmp_path)


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    source = write_corpus(str(tmp_path / "src"), n=4)
    calls = {"n": 0}
    real = data_mod.load_audio

    def flaky(path, rate):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle of decoding
        return real(path, rate)

    monkeypatch.setattr(data_mod, "load_audio", flaky)
    with pytest.raises(KeyboardInterrupt):
        prep(source, tmp_path / "out")
    assert not os.path.exists(tmp_path / "out") and not leftovers(tmp_path)


def test_shards(tmp_path):
    source = write_corpus(str(tmp_path / "src"), n=6)
    prep(source, tmp_path / "out", num_shards=3)
    assert len(glob.glob(str(tmp_path / "out" / "*.arrow"))) == 3
    assert datasets.load_from_disk(str(tmp_path / "out")).num_rows == 6


def test_script_on_sample_data(tmp_path):
    result = run_script(SCRIPT, "--source_data_dir", "sample_data", "--output_data_dir", tmp_path / "sample")
    assert result.returncode == 0, result.stderr
    assert "utterances kept: 8" in result.stdout
    assert datasets.load_from_disk(str(tmp_path / "sample")).num_rows == 8


@pytest.mark.slow
def test_shared_formats_and_train_set(shared_data_dir, tmp_path):
    prep(os.path.join(shared_data_dir, "formats"), tmp_path / "formats")
    formats = datasets.load_from_disk(str(tmp_path / "formats"))
    assert formats.num_rows == 5 and all(r["audio"]["sampling_rate"] == 16000 for r in decoded_rows(formats))
    prep(os.path.join(shared_data_dir, "espeak_en", "train"), tmp_path / "train", num_proc=2)
    train = datasets.load_from_disk(str(tmp_path / "train"))
    assert train.num_rows == 240 and train.features["audio"].sampling_rate == 16000


# ---------------------------------------------------------------------------------------------
# Kaldi data directories: wav.scp + segments
# ---------------------------------------------------------------------------------------------
RECORDINGS = {"recA": 6.0, "recB": 8.0}  # seconds of synthetic audio
# (utterance id, recording id, start, end) in the order of the segments (and text) file
SEGMENTS = [
    ("recA-0000", "recA", 0.0, 1.5),
    ("recA-0120", "recA", 1.2, 2.8),  # overlaps recA-0000: kept, with a warning
    ("recA-0300", "recA", 3.0, 6.005),  # 5 ms past the end of the 6 s recording: within the tolerance
    ("recA-0500", "recA", 5.0, 6.5),  # bad: past the end
    ("recB-0426", "recB", 4.26, 7.99),  # 4.26 s: a whole number of samples at 16 and 22.05 kHz
    ("recB-0050", "recB", 0.5, 2.0),  # listed after a later segment: rows are sorted by start
    ("recB-0300", "recB", 3.0, 3.0),  # bad: end not after start
    ("recC-0000", "recC", 0.0, 1.0),  # bad: no such recording
]
GOOD_IDS = ["recA-0000", "recA-0120", "recA-0300", "recB-0050", "recB-0426"]  # the rows, in dataset order
BAD_SEGMENT_MESSAGES = [
    "id recA-0500 (text line 4, segments line 4): end 6.5 s is beyond the end of recording recA (6.00 s)",
    "id recB-0300 (text line 7, segments line 7): end 3 s is not after start 3 s",
    "id recC-0000 (text line 8, segments line 8): recording recC has no entry in wav.scp",
]


def write_kaldi_dir(folder, segments=SEGMENTS, sampling_rate=16000, channels=1, wav_scp=None):
    """A Kaldi data directory (wav.scp with relative paths, segments, text) over the RECORDINGS;
    returns the folder and each recording's samples."""
    os.makedirs(os.path.join(folder, "audio"))
    audio = {}
    for seed, (rid, seconds) in enumerate(RECORDINGS.items(), start=1):
        audio[rid] = synthetic_speech(seconds, sampling_rate, seed=seed, channels=channels)
        sf.write(os.path.join(folder, "audio", f"{rid}.wav"), audio[rid], sampling_rate)
    files = {"wav.scp": wav_scp or [f"{rid} audio/{rid}.wav" for rid in RECORDINGS],
             "segments": [f"{uid} {rid} {start} {end}" for uid, rid, start, end in segments],
             "text": [f"{uid} sentence number {i}" for i, (uid, _, _, _) in enumerate(segments)]}
    for name, lines in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return str(folder), audio


def test_kaldi_segments_are_cut_from_their_recordings(tmp_path, monkeypatch, caplog):
    source, audio = write_kaldi_dir(tmp_path / "src")
    opened = []
    real = data_mod.load_audio_spans
    monkeypatch.setattr(data_mod, "load_audio_spans", lambda path, *a: opened.append(path) or real(path, *a))
    with caplog.at_level(logging.WARNING, logger="whisper_finetune.data"):
        summary = prep(source, tmp_path / "out", skip_invalid=True)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert ds.num_rows == summary.kept == 5
    assert ds.column_names == ["id", "audio", "sentence", "duration", "recording_id", "start", "end"]
    assert ds["id"] == GOOD_IDS
    assert ds["recording_id"] == ["recA", "recA", "recA", "recB", "recB"]
    assert ds["start"] == [0.0, 1.2, 3.0, 0.5, 4.26]
    assert ds["end"] == [1.5, 2.8, 6.005, 2.0, 7.99]
    assert sorted(opened) == [os.path.join(source, "audio", "recA.wav"), os.path.join(source, "audio", "recB.wav")]
    sentences = {uid: f"sentence number {i}" for i, (uid, _, _, _) in enumerate(SEGMENTS)}
    rows = decoded_rows(ds)
    for row in rows:
        expected = audio[row["recording_id"]][round(row["start"] * 16000):round(row["end"] * 16000)]
        assert row["audio"]["sampling_rate"] == 16000 and row["audio"]["array"].shape == expected.shape
        assert np.abs(row["audio"]["array"] - expected).max() < 1e-3  # 16-bit PCM round trip
        assert row["duration"] == pytest.approx(len(expected) / 16000)
        assert row["sentence"] == sentences[row["id"]]
    assert rows[2]["audio"]["array"].shape == (3 * 16000,)  # recA-0300 stops at the end of the recording
    text = str(summary)
    assert "utterances dropped: 3" in text
    for message in BAD_SEGMENT_MESSAGES:
        assert message in text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["1 pair(s) of overlapping segments (all kept): recA-0000 (0-1.5 s) and recA-0120 "
                        "(1.2-2.8 s) of recording recA"]


def test_bad_segments_are_refused_naming_each(tmp_path):
    source, _ = write_kaldi_dir(tmp_path / "src")
    with pytest.raises(DataValidationError) as info:
        prep(source, tmp_path / "out")
    assert info.value.problems == BAD_SEGMENT_MESSAGES
    assert not os.path.exists(tmp_path / "out") and not leftovers(tmp_path)


def test_segments_are_resampled_and_downmixed_like_whole_files(tmp_path):
    good = [s for s in SEGMENTS if s[0] in GOOD_IDS]
    source, audio = write_kaldi_dir(tmp_path / "src", good, sampling_rate=22050, channels=2)
    prep(source, tmp_path / "out", sampling_rate=16000)
    ds = datasets.load_from_disk(str(tmp_path / "out"))
    assert ds["id"] == GOOD_IDS
    for row in decoded_rows(ds):
        recording = resample(audio[row["recording_id"]][:, 0], 22050, 16000)  # the two channels are equal
        first, last = round(row["start"] * 16000), min(round(row["end"] * 16000), len(recording))
        clip = row["audio"]["array"]
        assert abs(len(clip) - (last - first)) <= 1
        # Resampled on its own, a clip matches the resampled recording away from its edges.
        assert np.abs(clip[200:-200] - recording[first + 200:first + len(clip) - 200]).max() < 2e-3


def _kaldi_edit(name, transform):
    return lambda s: _edit(os.path.join(s, name), transform)


# Today's checks, applied to a Kaldi directory of good segments: (name, how to break it, expected message)
BAD_KALDI_INPUTS = [
    ("missing from text", _kaldi_edit("text", lambda l: l[:1] + l[2:]),
     "segments line 2: id recA-0120 has no entry in text"),
    ("missing from segments", _kaldi_edit("segments", lambda l: l[:1] + l[2:]),
     "text line 2: id recA-0120 has no entry in segments"),
    ("duplicate id", _kaldi_edit("segments", lambda l: l + [l[1]]), "segments line 6: id recA-0120 repeats line 2"),
    ("empty transcription", _kaldi_edit("text", lambda l: l[:1] + ["recA-0120"] + l[2:]),
     "id recA-0120 (text line 2, segments line 2): empty transcription"),
    ("malformed segment", _kaldi_edit("segments", lambda l: l[:1] + ["recA-0120 recA 1.2"] + l[2:]),
     "id recA-0120 (text line 2, segments line 2): expected '<utt-id> <recording-id> <start-seconds> "
     "<end-seconds>', got 'recA-0120 recA 1.2'"),
    ("missing recording", lambda s: os.remove(os.path.join(s, "audio", "recB.wav")),
     "id recB-0426 (text line 4, segments line 4): recording recB (wav.scp line 2): audio file audio/recB.wav "
     "not found"),
    ("duplicate recording", _kaldi_edit("wav.scp", lambda l: l + ["recB audio/recA.wav"]),
     "id recB-0426 (text line 4, segments line 4): recording recB (wav.scp line 2): id recB repeats on wav.scp "
     "line(s) 3"),
]


@pytest.mark.parametrize("name,breaker,message", BAD_KALDI_INPUTS, ids=[b[0] for b in BAD_KALDI_INPUTS])
def test_bad_kaldi_input_is_refused_naming_the_utterance(tmp_path, name, breaker, message):
    source, _ = write_kaldi_dir(tmp_path / "src", [s for s in SEGMENTS if s[0] in GOOD_IDS])
    breaker(source)
    with pytest.raises(DataValidationError) as info:
        prep(source, tmp_path / "out")
    assert message in info.value.problems


def test_segment_longer_than_the_window(tmp_path):
    source, _ = write_kaldi_dir(tmp_path / "src", [s for s in SEGMENTS if s[0] in GOOD_IDS])
    with pytest.raises(DataValidationError) as info:
        prep(source, tmp_path / "out", max_duration=3.5)
    assert info.value.problems == ["id recB-0426 (text line 4, segments line 4): 3.7 s is longer than Whisper's "
                                   "3.5 s window"]


def test_piped_wav_scp_is_refused_by_the_script_naming_the_line(tmp_path):
    source, _ = write_kaldi_dir(tmp_path / "src", wav_scp=["recA audio/recA.wav", "recB sox audio/recB.wav -t wav - |"])
    result = run_script(SCRIPT, "--source_data_dir", source, "--output_data_dir", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "detected format: kaldi (text, wav.scp, segments)",
        f"error: {os.path.join(source, 'wav.scp')}, line 2: recording recB: 'sox audio/recB.wav -t wav - |' is a "
        f"piped command; data_prep reads only audio file paths: write the audio to files first and list those"]
    assert not os.path.exists(tmp_path / "out")


def test_extended_filename_in_wav_scp_is_refused(tmp_path):
    source, _ = write_kaldi_dir(tmp_path / "src", wav_scp=["recA data/wav.ark:1234", "recB audio/recB.wav"])
    with pytest.raises(UserError) as info:
        prep(source, tmp_path / "out")
    assert "wav.scp, line 1: recording recA: 'data/wav.ark:1234' is an extended filename (archive offset)" \
        in str(info.value)


def test_folder_layouts_that_are_refused(tmp_path):
    both = write_corpus(str(tmp_path / "both"), n=2)
    with open(os.path.join(both, "segments"), "w", encoding="utf-8") as f:
        f.write("utt0000 rec 0 1\n")
    with pytest.raises(UserError) as info:
        prep(both, tmp_path / "out")
    assert "has both audio_paths and segments: keep one" in str(info.value)
    source, _ = write_kaldi_dir(tmp_path / "kaldi")
    os.rename(os.path.join(source, "segments"), os.path.join(source, "segments.bak"))
    with pytest.raises(UserError) as info:
        prep(source, tmp_path / "out")
    assert "has wav.scp but no segments file" in str(info.value)
    os.rename(os.path.join(source, "segments.bak"), os.path.join(source, "segments"))
    os.remove(os.path.join(source, "wav.scp"))
    with pytest.raises(UserError) as info:
        prep(source, tmp_path / "out")
    assert "wav.scp: no such file (a source folder with 'segments' needs 'wav.scp'" in str(info.value)

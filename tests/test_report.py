"""The evaluation report page (whisper_finetune/evaluate/report.py, evaluate/report.py) and data_prep's utt2spk:
what the page's data holds, checked against result files; the page itself is driven in a browser in
tests/test_browser.py."""
import importlib.util
import json
import os

import datasets
import pytest

from conftest import REPO_ROOT, write_corpus
from whisper_finetune import cli, scoring
from whisper_finetune.evaluate import evaluation, report
from whisper_finetune.decode.options import DecodingOptions
from whisper_finetune.evaluate.config import EvalConfig
from whisper_finetune.data.config import DataPrepConfig
from whisper_finetune.data.corpus import prepare_dataset
from whisper_finetune.errors import DataValidationError

SCRIPT = "evaluate/report.py"
REFS = ["the cat sat on the mat", "a dog ran in the park", "birds sing in the morning", "we walked to the river",
        "she reads a long book", "rain fell all night"]
HYPS_A = ["the cat sat on a mat", "a dog ran in park", "birds sing in the morning", "we walked to the river bank",
          "she reads a long book", "rain fell all the night"]
HYPS_B = ["the cat sat on the mat", "a dog ran in a park", "words sing in the evening", "we walked to the river",
          "she reads a long book", "rain fell all night"]
SPEAKERS = ["ann", "bob", "ann", "bob", "cy", "cy"]


def page_data(path):
    """The JSON the page renders, read back from the HTML file."""
    html = open(path, encoding="utf-8").read()
    start = html.index('<script type="application/json" id="report-data">') + len(
        '<script type="application/json" id="report-data">')
    return json.loads(html[start:html.index("</script>", start)])


@pytest.fixture(scope="module")
def speaker_dataset(tmp_path_factory):
    """A data_prep dataset of six clips (1.0-1.5 s) with a utt2spk file."""
    root = tmp_path_factory.mktemp("speakers")
    source = write_corpus(str(root / "src"), n=len(REFS), sentences=REFS)
    with open(os.path.join(source, "utt2spk"), "w", encoding="utf-8") as f:
        f.write("".join(f"utt{i:04d} {s}\n" for i, s in enumerate(SPEAKERS)))
    out = str(root / "prepared")
    prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=out))
    return out


def write_result(folder, model, dataset, hyps, refs=REFS, normalizer="english"):
    """A result pair as the evaluators write it (scoring.write_results), for a fake model on ``dataset``."""
    scores = scoring.score(refs, hyps, normalizer)
    metadata = {"model": model, "dataset": dataset, "language": "en", "decoder_prompt": "<|startoftranscript|>",
                "rtfx": 12.5}
    _, json_path = scoring.write_results(folder, scoring.result_stem(os.path.basename(model), "set"),
                                         [f"utt{i:04d}" for i in range(len(refs))], refs, hyps, scores, metadata)
    return json_path


def test_utt2spk_adds_a_speaker_column_and_is_checked(speaker_dataset, tmp_path):
    ds = datasets.load_from_disk(speaker_dataset)
    assert ds["speaker"] == SPEAKERS and ds["id"][1] == "utt0001"
    source = write_corpus(str(tmp_path / "src"), n=3)
    with open(os.path.join(source, "utt2spk"), "w", encoding="utf-8") as f:
        f.write("utt0000 ann\nutt0002 bob\nutt0009 cy\n")
    with pytest.raises(DataValidationError, match="text line 2: id utt0001 has no entry in utt2spk") as caught:
        prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=str(tmp_path / "out")))
    assert "utt2spk line 3: id utt0009 has no entry in text" in str(caught.value)
    summary = prepare_dataset(DataPrepConfig(source_data_dir=source, output_data_dir=str(tmp_path / "out"),
                                             skip_invalid=True))
    assert summary.kept == 2 and datasets.load_from_disk(str(tmp_path / "out"))["speaker"] == ["ann", "bob"]


def test_without_utt2spk_the_columns_are_unchanged(tiny_dataset_dir):
    assert set(datasets.load_from_disk(tiny_dataset_dir).column_names) == {"id", "audio", "sentence", "duration"}


def test_alignment_counts_reproduce_the_result_files(speaker_dataset, tmp_path):
    a = write_result(str(tmp_path / "stock"), "/models/stock", speaker_dataset, HYPS_A)
    b = write_result(str(tmp_path / "tuned"), "/models/tuned", speaker_dataset, HYPS_B)
    built = report.build_report([a, b], str(tmp_path / "report.html"))
    [ds] = built.datasets
    assert [m.name for m in ds.models] == ["stock", "tuned"] and ds.ids[0] == "utt0000"
    for model, json_path in zip(ds.models, (a, b)):
        with open(json_path, encoding="utf-8") as f:
            figures = json.load(f)
        assert sum(model.errors) / sum(model.reference_words) == pytest.approx(figures["wer"], abs=1e-12)
        counts = {code: 0 for code in range(4)}
        for chunks in model.alignments:
            for code, r0, r1, h0, h1 in chunks:
                counts[code] += max(r1 - r0, h1 - h0)
        assert (counts[report.SUBSTITUTE], counts[report.DELETE], counts[report.INSERT]) == (
            figures["substitutions"], figures["deletions"], figures["insertions"])
    stock, tuned = ds.models
    # utt0000 "the mat" -> "a mat"; utt0001 loses "the"; utt0003 gains "bank"; utt0005 gains "the"
    assert [(s.reference, s.hypothesis, s.count) for s in stock.substitutions] == [("the", "a", 1)]
    assert [(w.word, w.count) for w in stock.deletions] == [("the", 1)]
    assert sorted((w.word, w.count) for w in stock.insertions) == [("bank", 1), ("the", 1)]
    assert sorted((s.reference, s.hypothesis) for s in tuned.substitutions) == [
        ("birds", "words"), ("morning", "evening"), ("the", "a")]
    by_speaker = {g.group: g for g in stock.by_speaker}
    assert by_speaker["bob"].errors == 2 and by_speaker["bob"].reference_words == 11
    assert by_speaker["cy"].wer == pytest.approx(1 / 9)
    assert [g.group for g in stock.by_duration] == ["0–2 s"] and stock.by_duration[0].utterances == 6
    assert ds.durations[5] == pytest.approx(1.5, abs=1e-3)
    [change] = ds.comparisons
    assert (change.better, change.worse, change.unchanged) == (3, 1, 2)
    assert [c.id for c in change.most_improved] == ["utt0000", "utt0003", "utt0005"]
    assert [(c.id, c.errors_before, c.errors_after) for c in change.most_degraded] == [("utt0002", 0, 2)]
    assert {g.group: g.difference for g in change.by_speaker}["cy"] == pytest.approx(-1 / 9)
    # 4 errors before, 3 after, over 31 words; the interval holds the difference and reaches both sides of 0
    interval = change.difference
    assert interval.difference == pytest.approx(change.wer_after - change.wer_before) == pytest.approx(-1 / 31)
    assert interval.low < interval.difference < interval.high and interval.low < 0 < interval.high
    assert (interval.confidence, interval.resamples) == (report.BOOTSTRAP_CONFIDENCE, report.BOOTSTRAP_RESAMPLES)
    report.write_report([a, b], str(tmp_path / "report.html"))
    written = page_data(str(tmp_path / "report.html"))["datasets"][0]["comparisons"][0]["difference"]
    assert (written["low"], written["high"]) == (interval.low, interval.high)


@pytest.mark.parametrize("before, after, words, expected", [
    # one more error in every utterance of 10 words: every draw differs by exactly 0.1
    ([1] * 10, [2] * 10, [10] * 10, (0.1, 0.1, 0.1)),
    # the same errors: nothing to tell apart
    ([2, 0, 1] * 4, [2, 0, 1] * 4, [5] * 12, (0.0, 0.0, 0.0)),
    # fewer than two utterances: nothing to resample
    ([1], [3], [10], None),
    ([0, 0], [1, 1], [0, 0], None),
])
def test_wer_difference_interval_table(before, after, words, expected):
    interval = report.wer_difference_interval(before, after, words)
    if expected is None:
        assert interval is None
    else:
        assert (interval.difference, interval.low, interval.high) == pytest.approx(expected, abs=1e-12)


def test_wer_difference_interval_narrows_with_more_utterances():
    # half the utterances one error better, half one worse: a difference of 0 that 20 utterances cannot
    # pin down; four times the utterances halve the interval (it scales as one over the square root)
    small = report.wer_difference_interval([1, 0] * 10, [0, 1] * 10, [10] * 20)
    large = report.wer_difference_interval([1, 0] * 40, [0, 1] * 40, [10] * 80)
    assert small.difference == large.difference == 0
    assert small.low < -0.02 and small.high > 0.02
    assert (large.high - large.low) / (small.high - small.low) == pytest.approx(0.5, abs=0.08)
    # a clear change: every utterance worse by 1 or 2 errors in 10 words leaves 0 outside
    clear = report.wer_difference_interval([0] * 20, [1, 2] * 10, [10] * 20)
    assert clear.difference == pytest.approx(0.15) and 0.1 <= clear.low < 0.15 < clear.high <= 0.2


def test_page_is_self_contained_and_escapes_text(speaker_dataset, tmp_path):
    hyps = list(HYPS_A)
    hyps[2] = "</script><script>alert(1)</script> birds"
    json_path = write_result(str(tmp_path / "r"), "/models/m", speaker_dataset, hyps, normalizer="none")
    page = str(tmp_path / "report.html")
    summary = report.write_report([json_path], page)
    html = open(page, encoding="utf-8").read()
    assert html.count("</script>") == 2 and "<script src" not in html and "http" not in html.lower()
    data = page_data(page)
    [ds] = data["datasets"]
    assert ds["models"][0]["hypotheses"][2] == hyps[2]
    assert all(src.startswith("data:audio/ogg;base64,") for src in ds["audio"])
    assert summary.embedded_audio == 6 and summary.linked_audio == 0 and summary.bytes == os.path.getsize(page)


def test_audio_over_the_budget_is_written_beside_the_page(speaker_dataset, tmp_path):
    json_path = write_result(str(tmp_path / "r"), "/models/m", speaker_dataset, HYPS_A)
    page = str(tmp_path / "out" / "page.html")
    summary = report.write_report([json_path], page, max_embedded_audio_mb=0)
    [ds] = page_data(page)["datasets"]
    assert summary.embedded_audio == 0 and summary.linked_audio == 6
    assert ds["audio"][0] == "page_audio/d0_000000_utt0000.ogg"
    clip = os.path.join(tmp_path, "out", ds["audio"][0])
    import soundfile as sf

    assert sf.info(clip).format == "OGG" and sf.info(clip).duration == pytest.approx(1.0, abs=0.02)


def test_missing_dataset_and_hub_dataset_give_a_page_without_audio(tmp_path):
    json_path = write_result(str(tmp_path / "r"), "/models/m", "google/fleurs/hi_in/test", HYPS_A)
    summary = report.write_report([json_path], str(tmp_path / "page.html"))
    [ds] = page_data(str(tmp_path / "page.html"))["datasets"]
    assert summary.embedded_audio == 0 and ds["audio"] == [None] * 6 and ds["durations"] is None
    assert "google/fleurs/hi_in/test is not on this machine" in ds["audio_note"]


def test_evaluate_writes_the_report_beside_the_results(tiny_en_model_dir, tiny_dataset_dir, tmp_path):
    config = EvalConfig(eval_datasets=(tiny_dataset_dir,), output_dir=str(tmp_path),
                                   hf_model=tiny_en_model_dir, custom=True, num_workers=0,
                                   decoding=DecodingOptions(max_new_tokens=4, batch_size=8))
    [result] = evaluation.evaluate(config)
    [ds] = page_data(str(tmp_path / "report.html"))["datasets"]
    assert ds["models"][0]["figures"]["wer"] == result.wer and ds["label"] == tiny_dataset_dir
    refs, hyps = scoring.read_result_pairs(result.txt_path)
    assert [r for r, s in zip(ds["references"], ds["scored"]) if s] == refs
    assert [h for h, s in zip(ds["models"][0]["hypotheses"], ds["scored"]) if s] == hyps
    assert len(ds["audio"]) == 8 and all(ds["audio"])


def _script_main():
    spec = importlib.util.spec_from_file_location("report_script", os.path.join(REPO_ROOT, SCRIPT))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _run(argv, capsys, status):
    """The script in-process as ``cli.run`` runs it; checks the exit status, returns ``(stdout, stderr)``."""
    with pytest.raises(SystemExit, match=f"^{status}$"):
        cli.run(_script_main(), argv)
    out = capsys.readouterr()
    return out.out, out.err


def test_script_help_errors_and_summary(speaker_dataset, tmp_path, capsys):
    shown, _ = _run(["-h"], capsys, 0)
    for flag in ("--output", "--max_embedded_audio_mb", "--title", "--verbose", "RESULT_DIR_OR_JSON", "baseline"):
        assert flag in shown, flag
    _, err = _run([str(tmp_path / "nowhere"), "--output", str(tmp_path / "p.html")], capsys, 2)
    assert err == f"error: {tmp_path / 'nowhere'}: not a result folder or a result .json file\n"
    (tmp_path / "empty").mkdir()
    _, err = _run([str(tmp_path / "empty"), "--output", str(tmp_path / "p.html")], capsys, 2)
    assert err.startswith("error: ") and "no result files" in err and err.count("\n") == 1
    write_result(str(tmp_path / "a"), "/models/stock", speaker_dataset, HYPS_A)
    _, err = _run([str(tmp_path / "a"), "--output", str(tmp_path / "p.html"), "--max_embedded_audio_mb", "-1"],
                  capsys, 2)
    assert err == "error: --max_embedded_audio_mb -1.0: must be 0 or more\n"
    assert not (tmp_path / "p.html").exists()
    out, _ = _run([str(tmp_path / "a"), "--output", str(tmp_path / "p.html")], capsys, 0)
    assert "6 utterances, 6 clips embedded, 0 linked" in out and (tmp_path / "p.html").is_file()

"""The report page and the demo in a real browser: Chromium (Debian package) driven by Playwright.

Never ``playwright install``: the browser is the system's /usr/bin/chromium (``.ci/run`` installs it).
The tests skip only when that binary is missing.
"""
import glob
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import REPO_ROOT, run_script
from whisper_finetune.evaluate import evaluation
from whisper_finetune.decode.options import DecodingOptions
from whisper_finetune.evaluate.config import EvalConfig
from whisper_finetune.scoring import read_result_pairs

CHROMIUM = "/usr/bin/chromium"
SAMPLE = os.path.join(REPO_ROOT, "sample_data", "audio", "sample_0000.flac")


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}: install the Debian package (apt-get install chromium), as .ci/run does")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--autoplay-policy=no-user-gesture-required"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert errors == [], errors  # no JavaScript error while the test drove the page


def _figures(folder):
    """``{dataset label: result JSON}`` of an evaluator output folder."""
    figures = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
        figures[result["dataset"]] = result
    return figures


def _check_summary(page, label, model_index, figures):
    table = page.locator(f'table.summary[data-dataset="{label}"]')
    for metric, digits in (("wer", 4), ("cer", 4), ("raw_wer", 4), ("substitutions", 0), ("deletions", 0),
                           ("insertions", 0), ("utterances", 0), ("rtfx", 2)):
        cell = table.locator(f'td[data-metric="{metric}"][data-model="{model_index}"]')
        assert float(cell.get_attribute("data-value")) == figures[metric], (label, metric)
        shown = cell.inner_text()  # rounded by the page (JavaScript's toFixed may round a tie up)
        assert len(shown.partition(".")[2]) == digits and abs(float(shown) - figures[metric]) <= 0.5001 * 10 ** -digits
    for metric in ("normalizer", "decoder_prompt"):
        cell = table.locator(f'td[data-metric="{metric}"][data-model="{model_index}"]')
        assert cell.inner_text() == str(figures[metric]), (label, metric)


def _row_wers(page):
    return [float(v) for v in page.locator("#utt-table tbody tr td.wer").evaluate_all(
        "cells => cells.map(c => c.dataset.wer)") if v != ""]


def _aligned_text(row, line):
    """The words of one aligned line (``r`` reference, ``h`` hypothesis) of a table row, gaps left out."""
    return " ".join(row.locator(f".align .w > .{line}:not(.gap)").all_inner_texts())


def _play(page, row):
    audio = row.locator("audio")
    audio.evaluate("a => a.play()")
    page.wait_for_function("a => a.currentTime > 0 && a.duration > 0", arg=audio.element_handle(), timeout=30000)
    return audio.evaluate("a => a.duration")


@pytest.mark.slow
@pytest.mark.real_model
def test_report_of_two_models_in_the_browser(real_model_dir, tiny_en_model_dir, prepared_shared, page, tmp_path):
    sets = (prepared_shared("espeak_en/eval"), prepared_shared("real_en_dev"))
    # A fine-tuned tiny.en takes minutes to make; the random tiny model stands in as the second model
    # (the README's screenshot compares a real fine-tune).
    for folder, model, options in (("stock", real_model_dir, DecodingOptions()),
                                   ("second", tiny_en_model_dir, DecodingOptions(max_new_tokens=8))):
        for data, samples in zip(sets, (3, 1)):  # real_en_dev's first clip alone is 27 s of speech
            evaluation.evaluate(EvalConfig(eval_datasets=(data,), output_dir=str(tmp_path / folder),
                                                      hf_model=model, custom=True, num_workers=0,
                                                      max_samples=samples, decoding=options))
    html = tmp_path / "report.html"
    built = run_script("evaluate/report.py", tmp_path / "stock", tmp_path / "second", "--output", html)
    assert built.returncode == 0, built.stderr
    assert [line for line in built.stderr.splitlines() if not line.startswith("report: ")] == []  # no warnings
    page.goto(html.as_uri())

    stock, second = _figures(str(tmp_path / "stock")), _figures(str(tmp_path / "second"))
    assert sorted(stock) == sorted(sets) and sorted(second) == sorted(sets)
    for label in sets:
        _check_summary(page, label, 0, stock[label])
        _check_summary(page, label, 1, second[label])

    page.select_option("#dataset-select", label=sets[0])
    page.select_option("#view-select", "0")  # the stock model alone: rows sorted by its WER
    wers = _row_wers(page)
    assert len(wers) == 3 and wers == sorted(wers, reverse=True)
    page.click("#sort-wer")
    assert _row_wers(page) == sorted(wers)
    page.click("#sort-wer")
    worst = page.locator("#utt-table tbody tr").first
    uid = worst.get_attribute("data-id")
    page.fill("#filter", uid)
    rows = page.locator("#utt-table tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-id") == uid
    lines = _result_lines(_json_of(tmp_path / "stock", sets[0]))
    assert _aligned_text(rows.first, "r") == lines[uid][0] and _aligned_text(rows.first, "h") == lines[uid][1]
    import datasets

    expected = dict(zip(*(datasets.load_from_disk(sets[0])[c] for c in ("id", "duration"))))[uid]
    assert _play(page, rows.first) == pytest.approx(expected, abs=0.1)

    page.select_option("#view-select", "0:1")  # stock against the second model
    assert page.locator(".comparison-counts").first.inner_text().startswith("On 3 utterances both scored")
    [comparison] = json.loads(page.locator("#report-data").text_content())["datasets"][0]["comparisons"]
    difference = comparison["difference"]
    assert page.locator(".comparison-interval").inner_text().startswith(
        f"WER difference {_points(difference['difference'])}, 95% interval {_points(difference['low'])} to "
        f"{_points(difference['high'])} (paired bootstrap over utterances, percentile interval: 10,000 draws, seed 0).")
    page.select_option("#dataset-select", label=sets[1])  # one utterance: no interval to draw
    assert page.locator(".comparison-counts").count() == 1 and page.locator(".comparison-interval").count() == 0
    page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
    assert os.path.getsize(tmp_path / "report.png") > 10_000


def _points(value):
    """A WER difference as the page writes it: signed percentage points, one decimal."""
    return f"{100 * value:+.1f} pt" if value else "0.0 pt"


def _json_of(folder, label):
    for path in glob.glob(os.path.join(folder, "*.json")):
        with open(path, encoding="utf-8") as f:
            if json.load(f)["dataset"] == label:
                return path
    raise AssertionError(f"no result for {label} in {folder}")


def _result_lines(json_path):
    """``{id: (REF line, HYP line)}`` of a result's text file (the normalised text), in file order."""
    lines, uid = {}, None
    with open(json_path[:-len(".json")] + ".txt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ID: "):
                uid = line[4:].split("  (")[0]
            elif line.startswith("REF: "):
                ref = line[5:]
            elif line.startswith("HYP: "):
                lines[uid] = (ref, line[5:])
    return lines


@pytest.mark.slow
@pytest.mark.real_model
def test_hindi_report_renders_the_normalised_devanagari(real_multilingual_model_dir, prepared_shared, page, tmp_path):
    data = prepared_shared("espeak_hi/eval")
    [result] = evaluation.evaluate(EvalConfig(
        eval_datasets=(data,), output_dir=str(tmp_path), hf_model=real_multilingual_model_dir, custom=True,
        language="hi", max_samples=3, num_workers=0, decoding=DecodingOptions(max_new_tokens=40)))
    lines = _result_lines(result.json_path)
    ids = list(lines)
    refs, hyps = [lines[i][0] for i in ids], [lines[i][1] for i in ids]
    assert (refs, hyps) == read_result_pairs(result.txt_path)
    page.goto((tmp_path / "report.html").as_uri())  # the page the evaluation run wrote
    assert f"“{result.normalizer}” normaliser" in page.locator("#normaliser-note").inner_text()
    page.select_option("#sort-select", "index-asc")
    rows = page.locator("#utt-table tbody tr")
    assert rows.count() == 3
    for k in range(3):
        row = rows.nth(k)
        assert row.get_attribute("data-id") == ids[k]
        assert row.locator(".align").first.get_attribute("lang") == "hi"
        assert _aligned_text(row, "r") == refs[k]
        assert _aligned_text(row, "h") == hyps[k]
    assert any("\u0900" <= ch <= "\u097f" for ch in refs[0])  # the text is Devanagari
    word = refs[2].split()[0]
    page.fill("#filter", word)
    assert rows.count() == sum(word in r or word in h for r, h in zip(refs, hyps)) >= 1
    page.fill("#filter", ids[1])
    assert rows.count() == 1 and _aligned_text(rows.first, "r") == refs[1]
    assert _play(page, rows.first) > 1
    page.screenshot(path=str(tmp_path / "hindi.png"))
    assert os.path.getsize(tmp_path / "hindi.png") > 10_000


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_transcribes_an_upload_with_both_models(tiny_en_model_dir, tiny_model_dir, page, tmp_path):
    from whisper_finetune.audio import load_audio
    from whisper_finetune.decode.config import DemoConfig
    from whisper_finetune.demo import load_models, transcribe_clip

    port = _free_port()
    args = ["--hf_model", tiny_en_model_dir, "--compare_model", tiny_model_dir, "--language", "en",
            "--max_new_tokens", "8"]
    log = open(tmp_path / "demo.log", "w+", encoding="utf-8")
    server = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "demo.py"), *args, "--server_port", str(port)],
                              cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        models = load_models(DemoConfig(hf_model=tiny_en_model_dir, compare_model=tiny_model_dir, language="en",
                                        decoding=DecodingOptions(max_new_tokens=8)))
        expected = [transcribe_clip(m, load_audio(SAMPLE)).text for m in models]
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, open(tmp_path / "demo.log").read()
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the demo did not start within 180 s"
                time.sleep(1)
        page.goto(url)
        page.set_input_files("#audio-input input[type=file]", SAMPLE)
        page.wait_for_function("() => [0, 1].every(k => document.querySelector(`#timing-${k} textarea, "
                               "#timing-${k} input`)?.value)", timeout=120000)
        for k, text in enumerate(expected):
            assert page.locator(f"#transcript-{k} textarea").input_value() == text
            assert "s of audio decoded in" in page.locator(f"#timing-{k} textarea, #timing-{k} input").first.input_value()
            assert page.locator(f"#segments-{k}").inner_text().count("2.739") == 1  # the one segment's end
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    with open(tmp_path / "demo.log", encoding="utf-8") as f:
        logged = f.read()
    assert f"demo running on {url}" in logged and "gradio.live" not in logged
    with pytest.raises(OSError, match="refused"):
        urllib.request.urlopen(url, timeout=5)  # the server is gone

"""Scores, result files and the WER equality (the header equals jiwer on the file's own lines)."""
import json

import jiwer
import pytest

from whisper_finetune.scoring import read_result_pairs, result_stem, score, summary_table, write_results

REFS = ["The cat sat on the mat.", "A dog ran!", "", "Birds sing in the morning"]
HYPS = ["the cat sat on a mat", "a dog ran", "uh", "birds sang in the morning"]


def test_score_matches_jiwer_on_normalised_text_and_counts_empty_references():
    result = score(REFS, HYPS, "english")
    scored_refs = [result["normalized_references"][i] for i in result["scored"]]
    scored_hyps = [result["normalized_hypotheses"][i] for i in result["scored"]]
    assert result["wer"] == pytest.approx(jiwer.wer(scored_refs, scored_hyps))
    assert result["cer"] == pytest.approx(jiwer.cer(scored_refs, scored_hyps))
    assert result["empty_references"] == 1 and result["scored_utterances"] == 3 and result["utterances"] == 4
    assert result["substitutions"] == 2 and result["deletions"] == 0 and result["insertions"] == 0
    assert result["raw_wer"] > result["wer"]  # case and punctuation count as errors before normalisation


def test_result_files_round_trip(tmp_path):
    result = score(REFS, HYPS, "english")
    txt, js = write_results(str(tmp_path), result_stem("openai/whisper-tiny", "data/eval"), ["a", "b", "c", "d"],
                            REFS, HYPS, result, {"model": "openai/whisper-tiny", "dataset": "data/eval"})
    assert txt.endswith("openai_whisper-tiny__data_eval.txt")
    text = open(txt, encoding="utf-8").read()
    header_wer = float(next(line for line in text.splitlines() if line.startswith("WER: ")).split()[1])
    refs, hyps = read_result_pairs(txt)
    assert len(refs) == 3
    assert header_wer == pytest.approx(jiwer.wer(refs, hyps), abs=1e-4)
    assert "ID: c  (empty reference: not scored)" in text and "# normalizer: english" in text
    figures = json.load(open(js, encoding="utf-8"))
    assert figures["model"] == "openai/whisper-tiny" and figures["empty_references"] == 1
    assert figures["wer"] == pytest.approx(header_wer, abs=1e-4)
    assert "normalized_references" not in figures


def test_summary_table_lists_each_dataset():
    from types import SimpleNamespace

    table = summary_table([SimpleNamespace(dataset="x", utterances=3, wer=0.25, cer=0.1, raw_wer=0.5,
                                           normalizer="indic", rtfx=12.0)])
    assert "x" in table and "0.2500" in table and "indic" in table

"""WER/CER with jiwer, result files (text + JSON) and the summary table.

Scores are computed on normalised text (the normaliser's name travels with the result) and on the
raw text. Utterances whose normalised reference is empty have no defined WER contribution: they are
counted, listed in the result file, and left out of the scores rather than silently dropped.
"""
import json
import os
import re

import jiwer

from .files import atomic_write_text
from .text import get_normalizer

RESULT_SUFFIX = ".txt"
WER_NOT_MEANINGFUL = " (not meaningful: words are not spaced in this language; read CER)"


def _safe_measures(refs, hyps):
    """jiwer word and character measures for parallel lists (empty lists give zeros)."""
    if not refs:
        return {"wer": 0.0, "cer": 0.0, "substitutions": 0, "deletions": 0, "insertions": 0, "hits": 0}
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return {"wer": words.wer, "cer": chars.cer, "substitutions": words.substitutions,
            "deletions": words.deletions, "insertions": words.insertions, "hits": words.hits}


def score(references, hypotheses, normalizer, primary_metric="wer"):
    """Score hypotheses against references.

    Returns a dict with normalised ``wer``/``cer`` and their S/D/I/hit counts, ``raw_wer``/``raw_cer``
    (whitespace collapsed only), ``primary_metric`` (the one to read: ``cer`` for languages written
    without spaces between words) and ``score`` (its value), utterance counts, and ``scored``
    (indices of the utterances that entered the normalised score).
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    norm = get_normalizer(normalizer)
    raw = get_normalizer("none")
    n_refs = [norm(r) for r in references]
    n_hyps = [norm(h) for h in hypotheses]
    scored = [i for i, r in enumerate(n_refs) if r]
    result = _safe_measures([n_refs[i] for i in scored], [n_hyps[i] for i in scored])
    raw_scored = [i for i in range(len(references)) if raw(references[i])]
    raw_measures = _safe_measures([raw(references[i]) for i in raw_scored], [raw(hypotheses[i]) for i in raw_scored])
    result.update(primary_metric=primary_metric, score=result[primary_metric],
                  raw_wer=raw_measures["wer"], raw_cer=raw_measures["cer"], normalizer=normalizer,
                  utterances=len(references), scored_utterances=len(scored),
                  empty_references=len(references) - len(scored),
                  reference_words=sum(len(n_refs[i].split()) for i in scored),
                  normalized_references=n_refs, normalized_hypotheses=n_hyps, scored=scored)
    return result


def result_stem(model_name, dataset_name, marker=None):
    """File stem for a result: ``<model>__<dataset>[__<marker>]`` with path-unsafe characters replaced."""
    parts = [model_name, dataset_name] + ([marker] if marker else [])
    return "__".join(re.sub(r"[^A-Za-z0-9._-]+", "_", p.strip("/")).strip("_") for p in parts)


def write_results(output_dir, stem, ids, references, hypotheses, scores, metadata):
    """Write ``<stem>.txt`` (scores, then ID/REF/HYP per utterance) and ``<stem>.json`` into ``output_dir``.

    REF/HYP lines hold the normalised text the WER was computed on (jiwer on them reproduces the WER in
    the header); RAW_REF/RAW_HYP hold the text before normalisation. ``metadata`` (model, dataset,
    language, decoding options, timing...) is written into both files. Returns the two paths.
    """
    os.makedirs(output_dir, exist_ok=True)
    scored = set(scores["scored"])
    header = [f"# {key}: {value}" for key, value in metadata.items()]
    by_cer = scores["primary_metric"] == "cer"
    figures = [f"CER: {scores['cer']:.4f}", f"WER: {scores['wer']:.4f}{WER_NOT_MEANINGFUL if by_cer else ''}"]
    header += [
        f"# normalizer: {scores['normalizer']} (REF/HYP lines are normalised; RAW_* lines are as decoded)",
        f"# primary_metric: {scores['primary_metric']}" + (" (the language is written without spaces between "
                                                          "words)" if by_cer else ""),
        *(figures if by_cer else figures[::-1]),
        f"RAW_WER: {scores['raw_wer']:.4f}",
        f"RAW_CER: {scores['raw_cer']:.4f}",
        f"UTTERANCES: {scores['utterances']} (scored {scores['scored_utterances']}, "
        f"empty reference {scores['empty_references']})",
        "",
    ]
    body = []
    for i, utt in enumerate(ids):
        body.append(f"ID: {utt}" + ("" if i in scored else "  (empty reference: not scored)"))
        body.append(f"REF: {scores['normalized_references'][i]}")
        body.append(f"HYP: {scores['normalized_hypotheses'][i]}")
        body.append(f"RAW_REF: {references[i]}")
        body.append(f"RAW_HYP: {hypotheses[i]}")
        body.append("")
    txt_path = os.path.join(output_dir, stem + RESULT_SUFFIX)
    json_path = os.path.join(output_dir, stem + ".json")
    figures = {k: v for k, v in scores.items() if k not in ("normalized_references", "normalized_hypotheses", "scored")}
    atomic_write_text(json_path, json.dumps({**metadata, **figures}, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(txt_path, "\n".join(header + body))
    return txt_path, json_path


def read_result_pairs(path):
    """Read the scored (REF, HYP) pairs back from a result text file (used by tests and tools)."""
    refs, hyps, skip = [], [], False
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ID: "):
                skip = "(empty reference" in line
            elif line.startswith("REF: ") and not skip:
                refs.append(line[5:])
            elif line.startswith("HYP: ") and not skip:
                hyps.append(line[5:])
    return refs, hyps


def summary_table(rows):
    """Format evaluation results (objects with ``dataset``, ``primary_metric``, ``score``, ``wer``, ``cer``...
    attributes) as an aligned table: the primary metric and its score first; a WER that is not meaningful
    (languages scored by characters) in parentheses, explained under the table."""
    columns = ["dataset", "utterances", "primary_metric", "score", "wer", "cer", "raw_wer", "normalizer", "rtfx"]
    cells = [["dataset", "utterances", "metric", "score", "wer", "cer", "raw_wer", "normalizer", "rtfx"]]
    for row in rows:
        values = [getattr(row, c, "") for c in columns]
        line = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in values]
        if getattr(row, "primary_metric", "wer") == "cer":
            line[columns.index("wer")] = f"({line[columns.index('wer')]})"
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells)
    if any(getattr(row, "primary_metric", "wer") == "cer" for row in rows):
        table += "\n(wer in parentheses: not meaningful for languages written without spaces between words)"
    return table

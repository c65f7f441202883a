"""The parity check: every export decoded by its own runtime beside our PyTorch evaluator, scored with the
project's scoring, in one table."""
import logging
import os
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import scoring
from ..data.loading import load_datasets
from ..data.schema import AUDIO_COLUMN, ID_COLUMN, TEXT_COLUMN, DatasetSpec, is_saved_dataset
from ..decode.options import DecodingOptions
from ..errors import OptionError
from ..model import loading, sources
from .runtimes import open_runtime
from .config import PARITY_MAX_WER_DELTA, PARITY_MIN_UTTERANCES
from .targets import size_of

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class VerifyRow:
    """One line of the parity table: one runtime (or the PyTorch reference) on one dataset."""

    dataset: str
    export: str  # "pytorch" for the reference, else an ExportTarget name
    runtime: str
    utterances: int
    wer: float
    cer: float
    identical: float  # share of utterances whose transcript equals PyTorch's (whitespace collapsed)
    rtfx: float  # seconds of audio per second of decoding
    size_bytes: int
    wer_delta: Optional[float]  # this WER minus PyTorch's
    enforced: bool
    passed: Optional[bool]  # None: not enforced (quantised, or fewer than PARITY_MIN_UTTERANCES)
    results_path: Optional[str]


def reference_decode(model, dataset_specs, custom, output_dir, language, normalizer, batch_size, max_samples):
    """PyTorch reference: our evaluator (greedy, no timestamps, batched); one ``EvalResult`` per dataset.

    The one place that calls the evaluator, so a change of its interface is mended here.
    """
    from ..evaluate.config import EvalConfig
    from ..evaluate.evaluation import evaluate

    common = dict(hf_model=model, output_dir=output_dir, language=language, normalizer=normalizer,
                  max_samples=max_samples, num_workers=0,
                  decoding=DecodingOptions(batch_size=batch_size, num_beams=1))
    if custom:
        return evaluate(EvalConfig(eval_datasets=tuple(s.name for s in dataset_specs), custom=True, **common))
    results = []
    for spec in dataset_specs:  # the Hub evaluator takes one dataset per run
        results += evaluate(EvalConfig(dataset=spec.name, config=spec.config, split=spec.split, **common))
    return results


def dataset_specs(datasets, split=None, config=None):
    """The parity check's datasets as ``(specs, custom)``: all data_prep folders (``custom``), or all Hub ids
    (read at ``split`` and ``config``); anything else is an :class:`OptionError` on ``--verify_datasets``."""
    local = [is_saved_dataset(d) for d in datasets]
    if any(local) and not all(local):
        raise OptionError("verify_datasets", " ".join(datasets), "give either data_prep folders or "
                          "Hub datasets, not both")
    for name, is_local in zip(datasets, local):
        if not is_local and (os.path.exists(name) or not sources.looks_like_hub_id(name)):
            raise OptionError("verify_datasets", name, "not a data_prep folder (make one with "
                              "custom_data/data_prep.py) and not a Hub dataset id")
    custom = all(local)
    specs = tuple(DatasetSpec(name=d, split=None) if custom else DatasetSpec(name=d, config=config, split=split)
                  for d in datasets)
    return specs, custom


def verify(source, targets, paths, verify_dir, *, model, specs, custom, language, normalizer, batch_size,
           max_samples):
    """Decode each dataset (``specs``, ``custom``: as :func:`dataset_specs` gives them) with PyTorch and with
    every export's runtime; score all with the project's scoring; returns the table rows and the parity
    failures. ``model`` is ``--model`` as given; ``paths`` maps each target's name to its export."""
    from ..audio import SAMPLE_RATE, decode_example_audio
    from ..text import get_normalizer

    references = reference_decode(model, specs, custom, verify_dir, language, normalizer, batch_size, max_samples)
    datasets = load_datasets(specs, custom=custom)
    max_new_tokens = DecodingOptions().max_new_tokens
    same = get_normalizer("none")
    rows, failures, loaded = [], [], []
    # the weights only (an output folder also holds checkpoints and logs)
    model_size = sum(os.path.getsize(os.path.join(model, f)) for f in sources.WEIGHT_FILES
                     if os.path.isfile(os.path.join(model, f))) if os.path.isdir(model) else 0
    for spec, dataset, ref in zip(specs, datasets, references):
        if max_samples is not None:
            dataset = dataset.select(range(min(max_samples, len(dataset))))
        ref_hyps = _raw_hypotheses(ref.txt_path)
        audios = [decode_example_audio(value, SAMPLE_RATE) for value in dataset[AUDIO_COLUMN]]
        seconds = sum(len(a) for a in audios) / SAMPLE_RATE
        loaded.append((spec, dataset, ref, ref_hyps, audios, seconds))
        rows.append(VerifyRow(dataset=spec.label, export="pytorch", runtime="transformers", utterances=len(dataset),
                              wer=ref.wer, cer=ref.cer, identical=1.0, rtfx=ref.rtfx, size_bytes=model_size,
                              wer_delta=None, enforced=False, passed=None, results_path=ref.txt_path))
    english_only = loading.is_english_only(loading.generation_config_of(source))
    language = references[0].language or "en"  # None: English-only model (no language token)
    for target in targets:
        runtime = open_runtime(target, paths[target.name], language, english_only, batch_size, max_new_tokens)
        for spec, dataset, ref, ref_hyps, audios, seconds in loaded:
            start = time.perf_counter()
            hyps = runtime.transcribe(audios)
            wall = time.perf_counter() - start
            texts = list(dataset[TEXT_COLUMN])
            scores = scoring.score(texts, hyps, ref.normalizer)
            identical = float(np.mean([same(a) == same(b) for a, b in zip(hyps, ref_hyps)]))
            delta = scores["wer"] - ref.wer
            checked = target.enforced and scores["scored_utterances"] >= PARITY_MIN_UTTERANCES
            passed = (abs(delta) <= PARITY_MAX_WER_DELTA) if checked else None
            metadata = {"model": model, "export": target.name, "runtime": runtime.name,
                        "dataset": spec.label, "language": language, "wall_seconds": round(wall, 3),
                        "rtfx": round(seconds / wall, 3), "pytorch_wer": ref.wer}
            stem = scoring.result_stem(source.name, os.path.basename(os.path.normpath(spec.name)), target.name)
            txt_path, _ = scoring.write_results(verify_dir, stem, list(dataset[ID_COLUMN]), texts, hyps, scores,
                                                metadata)
            row = VerifyRow(dataset=spec.label, export=target.name, runtime=runtime.name, utterances=len(dataset),
                            wer=scores["wer"], cer=scores["cer"], identical=identical, rtfx=round(seconds / wall, 3),
                            size_bytes=size_of(paths[target.name]), wer_delta=delta, enforced=target.enforced,
                            passed=passed, results_path=txt_path)
            rows.append(row)
            logger.info("%s on %s: WER %.4f (PyTorch %.4f), identical %.3f, RTFx %.2f", target.name, spec.label,
                        row.wer, ref.wer, identical, row.rtfx)
            if passed is False:
                failures.append(f"{target.name} on {spec.label}: WER {row.wer:.4f} vs PyTorch {ref.wer:.4f} "
                                f"(difference {delta:+.4f}, allowed {PARITY_MAX_WER_DELTA})")
        del runtime  # frees the runtime's threads and memory before the next one loads
    return rows, failures


def _raw_hypotheses(txt_path):
    """The RAW_HYP lines of a result file (the transcripts as decoded), in dataset order."""
    with open(txt_path, encoding="utf-8") as f:
        return [line[len("RAW_HYP: "):].rstrip("\n") for line in f if line.startswith("RAW_HYP: ")]


def format_table(rows):
    """The parity table as Markdown (also printed by the shim)."""
    lines = ["| dataset | export | runtime | utts | WER | CER | identical | RTFx | size | WER − PyTorch | parity |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        size = f"{r.size_bytes / 1e6:.1f} MB" if r.size_bytes else "–"
        delta = "–" if r.wer_delta is None else f"{r.wer_delta:+.4f}"
        parity = {True: "pass", False: "FAIL", None: "reported" if r.export != "pytorch" else "reference"}[r.passed]
        lines.append(f"| {os.path.basename(r.dataset.rstrip('/'))} | {r.export} | {r.runtime} | {r.utterances} | "
                     f"{r.wer:.4f} | {r.cer:.4f} | {r.identical:.3f} | {r.rtfx:.1f} | {size} | {delta} | {parity} |")
    return "\n".join(lines)

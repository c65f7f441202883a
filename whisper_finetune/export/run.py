"""Export a Whisper model to CTranslate2 (faster-whisper), ggml (whisper.cpp) and ONNX, and check parity.

One call of :func:`export` turns a model (our output folder, a ``checkpoint-N``, a LoRA adapter folder
or a Hub id) into one or more runtime formats inside ``output_dir``:

* ``ctranslate2-<quantization>/`` (:mod:`.ctranslate2`): CTranslate2's own converter (shared with
  ``--backend ctranslate2`` through :func:`whisper_finetune.decode.ctranslate2_backend.convert_to_ct2`)
  plus ``tokenizer.json`` and ``preprocessor_config.json``, so ``faster_whisper.WhisperModel(folder)``
  loads it offline as is;
* ``ggml-model-<quantization>.bin`` (:mod:`.ggml`): our own writer of whisper.cpp's legacy ggml layout
  (header, mel filters, vocabulary, tensors), with :func:`.ggml.read_ggml` to read it back;
* ``onnx-<quantization>/`` (:mod:`.onnx`): the encoder and an incremental decoder (with past key values)
  through torch's ONNX exporter, plus the config, generation config, tokenizer and preprocessor files;
  :class:`.runtimes.OnnxRuntime` is a complete greedy decoder over the two onnxruntime sessions.

With verification datasets (:mod:`.parity`), every export is decoded by its own runtime (:mod:`.runtimes`:
faster-whisper, pywhispercpp, onnxruntime) beside our PyTorch evaluator, scored with the project's
scoring, and the table is written to ``export_report.json`` and the model cards (:mod:`.card`). The
whole output folder is built in a temporary folder beside the destination and renamed into place at
the end. This module checks the request and runs the steps; :mod:`.targets` says what each export is.
"""
import json
import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, Optional, Tuple

from ..errors import UserError
from ..files import atomic_dir, atomic_write_text
from ..model import loading, sources
from . import ctranslate2, ggml, onnx, parity
from .card import CARD_FILE, render_card, tool_versions
from .config import PARITY_MAX_WER_DELTA, PARITY_MIN_UTTERANCES, ExportOptions, check_values
from .parity import VerifyRow
from .runtimes import RUNTIMES
from .targets import size_of

logger = logging.getLogger(__name__)

# torch.onnx.export(dynamo=True) builds the graph with onnxscript and writes it with onnx
EXPORT_PACKAGES = {"onnx": (("onnxscript", "onnxscript"), ("onnx", "onnx"))}
REPORT_FILE = "export_report.json"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export` wrote and measured."""

    output_dir: str
    exports: Dict[str, str]  # ExportTarget name -> final path
    sizes: Dict[str, int]
    rows: Tuple[VerifyRow, ...] = ()
    report_path: Optional[str] = None
    parity_ok: bool = True
    failures: Tuple[str, ...] = field(default_factory=tuple)


def require_package(module, package, purpose):
    """Import ``module`` or raise a one-line error naming the package to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserError(f"{purpose} needs the optional package {package}: pip install {package} "
                        f"({str(exc).splitlines()[0]})") from exc


def check_options(options: ExportOptions):
    """Validate every option and the destination before anything is loaded or written."""
    targets = check_values(options)
    source = sources.resolve_model(options.model, "model")
    for fmt, packages in EXPORT_PACKAGES.items():
        if fmt in options.formats:
            for module, package in packages:
                require_package(module, package, f"--format {fmt}")
    if any(t.format == "onnx" and t.quantization == "int8" for t in targets):
        require_package("onnxruntime.quantization", "onnxruntime", "--format onnx --quantization int8")
    if options.verify_datasets:
        for target in targets:
            module, package = RUNTIMES[target.format].requires
            require_package(module, package, f"--verify_datasets for --format {target.format}")
        _verify_specs(options)  # a missing dataset folder fails here, before the export is built
    return targets, source


def _verify_specs(options: ExportOptions):
    return parity.dataset_specs(options.verify_datasets, options.verify_split, options.verify_config)


# --- the source weights in one plain folder -------------------------------------------------------------

def materialize(source: sources.ModelSource, folder):
    """Write the model (LoRA merged) and its processor as one plain transformers folder (float32)."""
    model = loading.load_model(source.model_path)
    processor = loading.load_processor(source.processor_path)
    model.save_pretrained(folder)
    loading.save_processor(processor, folder)
    if not os.path.exists(os.path.join(folder, "tokenizer.json")):
        raise UserError(f"--model {source.model_path}: its tokenizer has no fast version (tokenizer.json), which "
                        f"faster-whisper needs")
    return model, processor


# --- the whole export ------------------------------------------------------------------------------------

def export(options: ExportOptions) -> ExportResult:
    """Write every requested export into ``options.output_dir`` (atomically), verify them when asked."""
    targets, source = check_options(options)
    out = os.path.abspath(options.output_dir)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    # the source weights in a scratch folder beside it; the output folder built in place of a .partial one
    with tempfile.TemporaryDirectory(prefix=".export-tmp-", dir=parent) as work, atomic_dir(out) as build:
        source_dir = os.path.join(work, "source")
        start = time.perf_counter()
        model, processor = materialize(source, source_dir)
        logger.info("loaded %s in %.1f s", source.model_path, time.perf_counter() - start)
        paths = {}
        for target in targets:
            start = time.perf_counter()
            path = os.path.join(build, target.name)
            try:
                if target.format == "ctranslate2":
                    ctranslate2.write_ctranslate2(source_dir, path, target.quantization)
                elif target.format == "ggml":
                    ggml.write_ggml(model, processor, path, target.quantization)
                else:
                    onnx.write_onnx(model, source_dir, path, target.quantization)
            except (OSError, ValueError, RuntimeError) as exc:  # converters' own errors, as one line
                raise UserError(f"cannot export {source.model_path} to {target.name}: "
                                f"{str(exc).splitlines()[0]}") from exc
            paths[target.name] = path
            logger.info("wrote %s (%.1f MB) in %.1f s", target.name, size_of(path) / 1e6, time.perf_counter() - start)
        del model
        rows, failures = (), ()
        if options.verify_datasets:
            specs, custom = _verify_specs(options)
            rows, failures = parity.verify(
                source, targets, paths, os.path.join(build, "verify"), model=options.model, specs=specs,
                custom=custom, language=options.verify_language, normalizer=options.normalizer,
                batch_size=options.verify_batch_size, max_samples=options.verify_max_samples)
        sizes = {t.name: size_of(paths[t.name]) for t in targets}
        base = sources.adapter_base(source.model_path) if os.path.isdir(source.model_path) else None
        report = {"model": source.model_path, "processor": source.processor_path, "adapter_base": base,
                  "options": asdict(options), "exports": [{**asdict(t), "name": t.name, "enforced": t.enforced,
                                                           "size_bytes": sizes[t.name]} for t in targets],
                  "parity_rule": {"max_wer_delta": PARITY_MAX_WER_DELTA, "min_utterances": PARITY_MIN_UTTERANCES},
                  "failures": list(failures), "versions": tool_versions()}
        final_rows = tuple(_relocate(r, build, out) for r in rows)
        report["rows"] = [asdict(r) for r in final_rows]
        atomic_write_text(os.path.join(build, REPORT_FILE), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        atomic_write_text(os.path.join(build, CARD_FILE), render_card(source, targets, final_rows))
        for target in targets:
            if os.path.isdir(paths[target.name]):
                atomic_write_text(os.path.join(paths[target.name], CARD_FILE),
                                  render_card(source, targets, final_rows, only=target.name))
    return ExportResult(output_dir=out, exports={t.name: os.path.join(out, t.name) for t in targets}, sizes=sizes,
                        rows=final_rows, report_path=os.path.join(out, REPORT_FILE), parity_ok=not failures,
                        failures=tuple(failures))


def _relocate(row, build, out):
    """A row whose result path points into the final folder instead of the temporary one."""
    if row.results_path and row.results_path.startswith(build):
        return replace(row, results_path=out + row.results_path[len(build):])
    return row

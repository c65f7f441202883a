"""Benchmark evaluation speed and WER: transformers.pipeline, our evaluator (PyTorch, JAX, CTranslate2) and plain CTranslate2.

Every system decodes the same clips of one dataset with the same model, greedy by default (--num_beams 1
for every row; pass --num_beams 5 to compare beam search instead) and at most --max_new_tokens tokens.
Rows (--rows picks a subset):

  pipeline           (a) transformers.pipeline("automatic-speech-recognition"), one file at a time
  pipeline_batched   (b) the same pipeline with batch_size=--batch_size
  pytorch            (c) our evaluator, PyTorch backend, float32
  jax                (d) our evaluator, JAX backend, float32 (compile time in its own column, not in RTFx)
  ct2_float32        (e) our evaluator, --backend ctranslate2 --compute_type float32
  ct2_int8           (e) our evaluator, --backend ctranslate2 --compute_type int8
  ct2_ref_float32    (e) plain ctranslate2.models.Whisper.generate on log-mel features, batched, float32,
                         on the checkpoint converted by ctranslate2's own TransformersConverter (the
                         reference users would pick; length-sorted batches like ours)
  ct2_ref_int8       (e) the same, int8
  faster_whisper_int8  (e) faster-whisper's WhisperModel.transcribe, int8, one clip at a time (how its users
                         run short clips: its batched pipeline batches the chunks of one long file), on the
                         same converted checkpoint; without timestamps, no fallback, no previous-text prompt
  pytorch_bf16       (f) our evaluator, PyTorch backend, bfloat16
  jax_bf16           (f) our evaluator, JAX backend, bfloat16 (--half_precision)
  pytorch_fp16       (f) our evaluator, PyTorch backend, float16 (GPU)
  pipeline_batched_fp16  (b) the batched pipeline in float16 (dtype=torch.float16; GPU), what a GPU user
                         of the pipeline would run
  pytorch_dynamic    (g) our evaluator, PyTorch float32, --audio_context dynamic (the encoder runs on each
                         batch's bucket instead of 30 s; for models fine-tuned with --dynamic_audio_context)

--device -1 runs every row on the CPU (default); --device N runs them on GPU N (the pipeline with
device=N, ours with --device N, CTranslate2 with device="cuda"); the JSON then also holds each row's
peak GPU memory (torch.cuda.max_memory_allocated, PyTorch rows).

Each row runs in its own child process (this script with --only ROW), sequentially, so that memory,
threads and JIT caches of one system do not affect another, and a failing system gives an error row
instead of stopping the run. The parent measures each child's peak RSS and anonymous memory.
"wall_s" is the time from the audio stored in the dataset to the texts: audio decoding, log-mel
features and decoding, without model loading, conversion or compilation (columns load_s and
compile_s). RTFx = audio seconds / wall seconds; vs_a = RTFx / RTFx of row (a). WER is normalised
with the same normaliser for every row (whisper_finetune.text.choose_normalizer, scoring.score).

--data is a data_prep output folder, or a Kaldi-style folder (text + audio_paths), which is first
prepared into a temporary folder with the library.

example:
  python3 bench/eval_speed.py --model ../shared/models/whisper-tiny.en --data data/espeak_en_eval \\
      --out bench/out/eval_speed.json
"""
import hashlib
import json
import os
import shutil
import sys
import time

from common import (add_row_process_flags, failure_line, parent_settings, print_table, run_measured, table_columns,
                    work_folder, write_json)

from whisper_finetune import cli  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402

# row -> (batch size, dtype) of transformers.pipeline; None: --batch_size
PIPELINE_ROWS = {"pipeline": (1, "float32"), "pipeline_batched": (None, "float32"),
                 "pipeline_batched_fp16": (None, "float16")}
# row -> (backend, compute_type, half_precision, audio_context) of our evaluator
OUR_ROWS = {"pytorch": ("pytorch", "float32", False, "full"), "jax": ("jax", "default", False, "full"),
            "ct2_float32": ("ctranslate2", "float32", False, "full"),
            "ct2_int8": ("ctranslate2", "int8", False, "full"),
            "pytorch_bf16": ("pytorch", "bfloat16", False, "full"), "jax_bf16": ("jax", "default", True, "full"),
            "pytorch_fp16": ("pytorch", "float16", False, "full"),
            "pytorch_dynamic": ("pytorch", "float32", False, "dynamic")}
REFERENCE_ROWS = {"ct2_ref_float32": "float32", "ct2_ref_int8": "int8"}
FASTER_WHISPER_ROWS = {"faster_whisper_int8": "int8"}
ROWS = ("pipeline", "pipeline_batched", "pytorch", "jax", "ct2_float32", "ct2_int8", "ct2_ref_float32",
        "ct2_ref_int8", "pytorch_bf16", "jax_bf16")
# float16 rows need a GPU; the dynamic audio context is for models fine-tuned with it: not in the default set
EXTRA_ROWS = ("pytorch_fp16", "pipeline_batched_fp16", "pytorch_dynamic", "faster_whisper_int8")
GPU_ROWS = ("pytorch_fp16", "pipeline_batched_fp16")
DESCRIPTIONS = {
    "pipeline": "(a) transformers.pipeline, 1 file at a time", "pipeline_batched": "(b) transformers.pipeline, batched",
    "pytorch": "(c) ours, pytorch fp32", "jax": "(d) ours, jax fp32",
    "ct2_float32": "(e) ours, ctranslate2 float32", "ct2_int8": "(e) ours, ctranslate2 int8",
    "ct2_ref_float32": "(e) plain ctranslate2 generate, float32", "ct2_ref_int8": "(e) plain ctranslate2 generate, int8",
    "pytorch_bf16": "(f) ours, pytorch bf16", "jax_bf16": "(f) ours, jax bf16",
    "pytorch_fp16": "(f) ours, pytorch fp16", "pipeline_batched_fp16": "(b) transformers.pipeline, batched, fp16",
    "pytorch_dynamic": "(g) ours, pytorch fp32, dynamic audio context",
    "faster_whisper_int8": "(e) faster-whisper transcribe, int8",
}
COLUMNS = ["row", "system", "batch", "wer", "audio_s", "wall_s", "rtfx", "vs_a", "load_s", "compile_s",
           "peak_rss_gb", "error"]


# ---------------------------------------------------------------------------------------------
# Shared set-up (parent and children)
# ---------------------------------------------------------------------------------------------
def model_facts(model, language):
    """(language code or None, english_only, normaliser name) for ``model``; multilingual models need a language."""
    from whisper_finetune.model import loading, sources
    from whisper_finetune.text import choose_normalizer

    if not os.path.isdir(model):
        raise UserError(f"--model {model}: no such folder (a transformers-format Whisper checkpoint)")
    generation = loading.generation_config_of(sources.resolve_model(model))
    english_only = loading.is_english_only(generation)
    code = loading.resolve_language(language, generation)
    if not english_only and code is None:
        raise UserError("--language: this model is multilingual; give the language of the speech, e.g. --language hi")
    return code, english_only, choose_normalizer(code, None, english_only)


def load_clips(data, max_samples):
    """The data_prep dataset at ``data`` (first ``max_samples`` rows) and the audio seconds per row."""
    from whisper_finetune.data.loading import load_custom_dataset
    from whisper_finetune.evaluate.evaluation import audio_durations

    dataset = load_custom_dataset(data)
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset, audio_durations(dataset)


def decoded_audio(dataset):
    """Every clip as a 16 kHz float32 array (part of each timed region, as in our evaluator)."""
    from whisper_finetune.audio import SAMPLE_RATE, decode_example_audio
    from whisper_finetune.data.schema import AUDIO_COLUMN

    return [decode_example_audio(value, SAMPLE_RATE) for value in dataset[AUDIO_COLUMN]]


# ---------------------------------------------------------------------------------------------
# One row, in a child process
# ---------------------------------------------------------------------------------------------
def run_pipeline(args, dataset, batch_size, dtype, code, english_only):
    """Rows (a)/(b): ``transformers.pipeline`` on decoded audio; returns (hypotheses, wall, load seconds)."""
    import torch
    from transformers import pipeline

    start = time.perf_counter()
    asr = pipeline("automatic-speech-recognition", model=args.model, device=args.device, dtype=getattr(torch, dtype))
    if english_only and hasattr(asr.model.generation_config, "lang_to_id"):
        # transformers runs language detection whenever this attribute exists (random test models carry None)
        del asr.model.generation_config.lang_to_id
    load = time.perf_counter() - start
    generate_kwargs = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    if not english_only:
        generate_kwargs.update(language=code, task="transcribe")
    start = time.perf_counter()
    audio = [{"raw": a, "sampling_rate": 16000} for a in decoded_audio(dataset)]
    if batch_size == 1:
        outputs = [asr(a, generate_kwargs=generate_kwargs) for a in audio]
    else:
        outputs = asr(audio, batch_size=batch_size, generate_kwargs=generate_kwargs)
    wall = time.perf_counter() - start
    return [o["text"].strip() for o in outputs], wall, load


def convert_reference(model, folder):
    """Convert ``model`` with ctranslate2's own converter into ``folder`` once (reused by later rows and runs
    with the same --work_dir: delete it when the checkpoint changes)."""
    from ctranslate2.converters import TransformersConverter

    if not os.path.isdir(folder):
        staging = folder + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        TransformersConverter(model).convert(staging, force=True)
        os.replace(staging, folder)
    return folder


def run_ct2_reference(args, dataset, durations, compute_type, code, english_only):
    """Rows (e, reference): plain ``ctranslate2.models.Whisper.generate`` on batched log-mel features."""
    import ctranslate2
    import numpy as np
    from transformers import WhisperProcessor

    start = time.perf_counter()
    key = hashlib.sha1(os.path.abspath(args.model).encode()).hexdigest()[:12]  # a reused --work_dir, other model
    folder = convert_reference(args.model, os.path.join(args.work_dir, f"ct2-reference-{key}"))
    processor = WhisperProcessor.from_pretrained(args.model)
    model = ctranslate2.models.Whisper(folder, device="cpu" if args.device < 0 else "cuda",
                                       device_index=max(args.device, 0), compute_type=compute_type)
    prompt = ["<|startoftranscript|>"] + ([] if english_only else [f"<|{code}|>", "<|transcribe|>"])
    prompt = processor.tokenizer.convert_tokens_to_ids(prompt + ["<|notimestamps|>"])
    load = time.perf_counter() - start
    start = time.perf_counter()
    audio = decoded_audio(dataset)
    order = np.argsort(-durations, kind="stable")
    hypotheses = [None] * len(audio)
    for i in range(0, len(order), args.batch_size):
        batch = order[i:i + args.batch_size]
        features = processor.feature_extractor([audio[j] for j in batch], sampling_rate=16000,
                                               return_tensors="np").input_features  # (B, n_mels, 3000)
        # CTranslate2 halves max_length for Whisper: 2 x max_new_tokens gives max_new_tokens new tokens
        results = model.generate(ctranslate2.StorageView.from_array(features.astype(np.float32)),
                                 [prompt] * len(batch), beam_size=args.num_beams,
                                 max_length=min(448, 2 * args.max_new_tokens))
        texts = processor.batch_decode([r.sequences_ids[0] for r in results], skip_special_tokens=True)
        for j, text in zip(batch, texts):
            hypotheses[j] = text.strip()
    return hypotheses, time.perf_counter() - start, load


def run_faster_whisper(args, dataset, compute_type, code):
    """Row (e, faster-whisper): ``WhisperModel.transcribe`` on each decoded clip, as its users run short files."""
    from faster_whisper import WhisperModel

    start = time.perf_counter()
    key = hashlib.sha1(os.path.abspath(args.model).encode()).hexdigest()[:12]
    folder = convert_reference(args.model, os.path.join(args.work_dir, f"ct2-reference-{key}"))
    # faster-whisper reads the tokenizer and the mel count from the model folder
    for name in ("tokenizer.json", "preprocessor_config.json"):
        if os.path.exists(os.path.join(args.model, name)) and not os.path.exists(os.path.join(folder, name)):
            shutil.copy(os.path.join(args.model, name), folder)
    model = WhisperModel(folder, device="cpu" if args.device < 0 else "cuda", device_index=max(args.device, 0),
                         compute_type=compute_type)
    load = time.perf_counter() - start
    start = time.perf_counter()
    hypotheses = []
    for audio in decoded_audio(dataset):
        segments, _ = model.transcribe(audio, language=code, beam_size=args.num_beams, temperature=0.0,
                                       without_timestamps=True, condition_on_previous_text=False, vad_filter=False,
                                       max_new_tokens=args.max_new_tokens)
        hypotheses.append(" ".join(segment.text.strip() for segment in segments).strip())
    return hypotheses, time.perf_counter() - start, load


def run_ours(args, row, normalizer, code):
    """Rows (c)/(d)/(e)/(f): our :func:`whisper_finetune.evaluate.evaluation.evaluate`; returns its result dict."""
    from whisper_finetune.data.schema import DatasetSpec
    from whisper_finetune.decode.options import DecodingOptions
    from whisper_finetune.evaluate.config import EvalConfig
    from whisper_finetune.evaluate.evaluation import evaluate

    backend, compute_type, half, audio_context = OUR_ROWS[row]
    options = DecodingOptions(num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                              batch_size=args.batch_size, backend=backend, compute_type=compute_type,
                              half_precision=half, audio_context=audio_context)
    config = EvalConfig(eval_datasets=(args.data,),
                        output_dir=os.path.join(args.work_dir, f"results-{row}"), hf_model=args.model, custom=True,
                        language=code, normalizer=normalizer, max_samples=args.max_samples, device=args.device,
                        num_workers=args.num_workers, decoding=options, result_marker=row)
    return evaluate(config)[0]


def peak_gpu_gb(device):
    """Peak GPU memory PyTorch allocated in this process (GB), or None on CPU."""
    if device < 0:
        return None
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 1e9, 3)


def run_row(args):
    """Child process: run one row and write its figures to ``--row_json``."""
    from whisper_finetune import scoring
    from whisper_finetune.data.schema import TEXT_COLUMN

    code, english_only, normalizer = model_facts(args.model, args.language)
    row = args.only
    if row in OUR_ROWS:
        result = run_ours(args, row, normalizer, code)
        figures = {"wer": result.wer, "wall_s": result.wall_seconds, "load_s": result.model_load_seconds,
                   "compile_s": result.compile_seconds, "normalizer": result.normalizer,
                   "utterances": result.utterances}
    else:
        dataset, durations = load_clips(args.data, args.max_samples)
        if row in PIPELINE_ROWS:
            batch_size, dtype = PIPELINE_ROWS[row]
            hypotheses, wall, load = run_pipeline(args, dataset, batch_size or args.batch_size, dtype, code,
                                                  english_only)
        elif row in FASTER_WHISPER_ROWS:
            hypotheses, wall, load = run_faster_whisper(args, dataset, FASTER_WHISPER_ROWS[row], code)
        else:
            hypotheses, wall, load = run_ct2_reference(args, dataset, durations, REFERENCE_ROWS[row], code,
                                                       english_only)
        scores = scoring.score(list(dataset[TEXT_COLUMN]), hypotheses, normalizer)
        figures = {"wer": scores["wer"], "wall_s": wall, "load_s": load, "compile_s": 0.0, "normalizer": normalizer,
                   "utterances": len(hypotheses), "examples": hypotheses[:3]}
    figures["peak_gpu_gb"] = peak_gpu_gb(args.device)
    with open(args.row_json, "w", encoding="utf-8") as f:
        json.dump(figures, f)


# ---------------------------------------------------------------------------------------------
# Parent: prepare data, run every row in a child, table + JSON
# ---------------------------------------------------------------------------------------------
def prepared_data(data, work_dir):
    """``data`` when it is a data_prep folder; a Kaldi-style folder is prepared into ``work_dir`` first."""
    from whisper_finetune.data.config import DataPrepConfig
    from whisper_finetune.data.corpus import prepare_dataset
    from whisper_finetune.data.schema import is_saved_dataset

    if is_saved_dataset(data):
        return data
    if os.path.isfile(os.path.join(data, "text")) and os.path.isfile(os.path.join(data, "audio_paths")):
        out = os.path.join(work_dir, "data")
        prepare_dataset(DataPrepConfig(source_data_dir=data, output_data_dir=out))
        return out
    raise UserError(f"--data {data}: neither a data_prep output folder nor a Kaldi-style folder (text + audio_paths)")


def child_command(args, row, data, row_json):
    """The command line that runs ``row`` alone in a child process."""
    # The child runs from the repository root: local folders given relative to the caller's folder are
    # passed whole (a Hub id is not a folder and stays as it is).
    model, data = (os.path.abspath(path) if os.path.isdir(path) else path for path in (args.model, data))
    command = [sys.executable, os.path.abspath(__file__), "--model", model, "--data", data,
               "--batch_size", str(args.batch_size), "--max_new_tokens", str(args.max_new_tokens),
               "--num_beams", str(args.num_beams), "--num_workers", str(args.num_workers),
               "--work_dir", args.work_dir, "--device", str(args.device), "--only", row, "--row_json", row_json]
    if args.language:
        command += ["--language", args.language]
    if args.max_samples is not None:
        command += ["--max_samples", str(args.max_samples)]
    return command


def measure_rows(args, data, audio_seconds):
    """Run each selected row in its own child; a failing row becomes an error row."""
    rows = []
    for name in args.rows:
        row_json = os.path.join(args.work_dir, f"{name}.json")
        row = {"row": name, "system": DESCRIPTIONS[name],
               "batch": PIPELINE_ROWS.get(name, (None,))[0] or args.batch_size, "audio_s": round(audio_seconds, 2)}
        try:
            _, memory, _ = run_measured(child_command(args, name, data, row_json),
                                        env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
            with open(row_json, encoding="utf-8") as f:
                figures = json.load(f)
        except RuntimeError as exc:
            rows.append({**row, "error": failure_line(exc)})
            print(f"{name}: FAILED: {rows[-1]['error']}", file=sys.stderr)
            continue
        figures["rtfx"] = audio_seconds / figures["wall_s"]
        rows.append({**row, **figures, **memory})
        print(f"{name}: WER {figures['wer']:.4f}  RTFx {figures['rtfx']:.2f}", file=sys.stderr)
    reference = next((r for r in rows if r["row"] == "pipeline" and "rtfx" in r), None)
    for row in rows:
        if reference and "rtfx" in row:
            row["vs_a"] = row["rtfx"] / reference["rtfx"]
        for column in table_columns(COLUMNS, args.device >= 0):
            row.setdefault(column, "" if column == "error" else "-")
    return rows


def device_name(device):
    """'CPU', or the GPU's name."""
    if device < 0:
        return "CPU"
    import torch

    return f"GPU {device} ({torch.cuda.get_device_name(device)})"


def check_args(args):
    """Validate flags before any long work."""
    unknown = [r for r in args.rows if r not in ROWS + EXTRA_ROWS]
    if unknown:
        raise UserError(f"--rows {' '.join(unknown)}: unknown row(s); choose from {', '.join(ROWS + EXTRA_ROWS)}")
    if args.device < 0 and set(args.rows) & set(GPU_ROWS):
        raise UserError(f"--rows {' '.join(sorted(set(args.rows) & set(GPU_ROWS)))}: float16 rows need a GPU "
                        "(--device 0)")
    for flag in ("batch_size", "num_beams", "max_new_tokens"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be at least 1")
    if args.max_new_tokens > 444:
        raise UserError(f"--max_new_tokens {args.max_new_tokens}: must be at most 444")
    if args.max_samples is not None and args.max_samples < 1:
        raise UserError(f"--max_samples {args.max_samples}: must be at least 1")
    if not os.path.isdir(args.data):
        raise UserError(f"--data {args.data}: no such folder")


def build_parser():
    parser = cli.parser(__doc__.split("\n\n")[0], "\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--model", required=True, help="transformers-format Whisper checkpoint folder")
    parser.add_argument("--data", required=True, help="data_prep output folder, or a Kaldi-style folder "
                        "(text + audio_paths) that is prepared first")
    parser.add_argument("--language", default=None, help="language of the speech (name or code); needed for "
                        "multilingual models, none for English-only (.en) ones")
    parser.add_argument("--batch_size", type=int, default=16, help="batch size of every batched row")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="token limit per clip, every row")
    parser.add_argument("--num_beams", type=int, default=1, help="beams for every row (1: greedy)")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers of our evaluator rows "
                        "(audio decoding and features overlap decoding)")
    parser.add_argument("--max_samples", type=int, default=None, help="use only the first N clips (quick runs)")
    parser.add_argument("--device", type=int, default=-1, help="-1: every row on the CPU; N: every row on GPU N")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows to run, in this order (default: all "
                        f"of {' '.join(ROWS)}; also: {' '.join(EXTRA_ROWS)}, of which {' '.join(GPU_ROWS)} need a "
                        f"GPU and pytorch_dynamic a model fine-tuned with --dynamic_audio_context)")
    return add_row_process_flags(parser, "eval_speed", "prepared data, conversions and result files")


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.setup_logging()
    if args.only:
        run_row(args)
        return 0
    check_args(args)
    _, english_only, normalizer = model_facts(args.model, args.language)
    with work_folder(args, "eval-speed"):
        data = prepared_data(args.data, args.work_dir)
        dataset, durations = load_clips(data, args.max_samples)
        rows = measure_rows(args, data, float(durations.sum()))
    decoding = "greedy (num_beams=1)" if args.num_beams == 1 else f"beam search (num_beams={args.num_beams})"
    print(f"\n{len(dataset)} clips, {durations.sum():.1f} s of audio; every row {decoding}, at most "
          f"{args.max_new_tokens} new tokens; WER normalised with '{normalizer}'; {device_name(args.device)}")
    table = print_table(rows, table_columns(COLUMNS, args.device >= 0))
    write_json(args.out, {"benchmark": "eval_speed", "settings": {**parent_settings(args), "decoding": decoding,
               "normalizer": normalizer, "english_only": english_only, "clips": len(dataset),
               "audio_seconds": float(durations.sum())}, "rows": rows, "table": table})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)

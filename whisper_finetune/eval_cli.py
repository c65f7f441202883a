"""Flag definitions shared by the evaluation and transcription shims (PyTorch, CTranslate2 and JAX).

Every entry point adds its flags through these functions, so the parallel scripts accept the same
options with the same meaning. Only the shims import this module.
"""
import argparse

from . import cli
from .data import DatasetSpec
from .decoding import BACKENDS, TASKS, DecodingOptions
from .evaluation import EvalConfig
from .text import NORMALIZERS


def device_flag(value):
    """``--device``: an integer (-1 CPU, N GPU N) or ``all``."""
    if str(value).strip().lower() == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected -1 (CPU), a GPU number or all, got {value!r}") from None


def add_model_flags(parser):
    """``--is_public_repo``, ``--hf_model``, ``--ckpt_dir``, ``--temp_ckpt_folder``, ``--language``, ``--device``."""
    group = parser.add_argument_group("model")
    group.add_argument("--is_public_repo", type=cli.str2bool, default=True,
                       help="True: load --hf_model (Hub id or local folder); False: load --ckpt_dir")
    group.add_argument("--hf_model", default=None, help="Hub id or local model folder (with --is_public_repo True)")
    group.add_argument("--ckpt_dir", default=None, help="local checkpoint folder, e.g. op_dir/checkpoint-394 "
                       "(with --is_public_repo False)")
    group.add_argument("--temp_ckpt_folder", default=None,
                       help="folder holding the processor files for a bare Trainer checkpoint that lacks them "
                            "(by default they are taken from the checkpoint's parent folder); never modified")
    group.add_argument("--language", default=None,
                       help="language name or code (hindi, hi); omitted: the language saved with a fine-tuned "
                            "model, else detected. English-only models accept only English")
    group.add_argument("--device", type=device_flag, default=-1, help="-1 for CPU, N for GPU N (JAX also takes "
                       "all: every local accelerator)")
    return group


def add_decoding_flags(parser, default_backend="pytorch"):
    """``--task``, ``--num_beams``, ``--max_new_tokens``, ``--batch_size``, ``--backend``, ``--compute_type``,
    ``--half_precision``."""
    group = parser.add_argument_group("decoding")
    group.add_argument("--task", default="transcribe", choices=TASKS, help="transcribe, or translate to English "
                       "(multilingual models only)")
    group.add_argument("--num_beams", type=int, default=1, help="beam size (1 = greedy)")
    group.add_argument("--max_new_tokens", type=int, default=128, help="most tokens generated per 30 s window")
    group.add_argument("--batch_size", type=int, default=16, help="utterances (or 30 s windows) decoded together")
    group.add_argument("--backend", default=default_backend, choices=BACKENDS,
                       help="pytorch (transformers generate), ctranslate2 (converted once, cached beside the "
                            "checkpoint) or jax")
    group.add_argument("--compute_type", default="default",
                       help="pytorch: float32, float16 or bfloat16 (default: float16 on GPU, float32 on CPU); "
                            "ctranslate2: int8, int8_float16, float16, bfloat16, float32, ...")
    group.add_argument("--half_precision", type=cli.str2bool, default=False, help="jax: compute in bfloat16")
    return group


def add_eval_flags(parser, custom):
    """Dataset, scoring and output flags of the evaluators (``custom``: data_prep folders, else HF datasets)."""
    group = parser.add_argument_group("data and results")
    if custom:
        group.add_argument("--eval_datasets", nargs="+", required=True,
                           help="one or more data_prep output folders (custom_data/data_prep.py)")
    else:
        group.add_argument("--dataset", required=True, help="Hub dataset id (google/fleurs) or a local dataset "
                           "folder (save_to_disk output or a folder load_dataset reads)")
        group.add_argument("--config", default=None, help="dataset configuration, e.g. gu_in")
        group.add_argument("--split", default="test", help="dataset split")
        group.add_argument("--text_column", default=None, help="column holding the transcription "
                           "(default: the first of sentence, text, transcription, transcript, ...)")
        group.add_argument("--audio_column", default="audio", help="column holding the audio")
    group.add_argument("--normalizer", default=None, choices=NORMALIZERS,
                       help="text normaliser for WER/CER (default: english for English, indic otherwise)")
    group.add_argument("--max_samples", type=int, default=None, help="evaluate only the first N utterances "
                       "of each dataset (quick runs)")
    group.add_argument("--num_workers", type=int, default=2, help="DataLoader workers decoding and featurising "
                       "audio while the model runs (0: in the main process)")
    group.add_argument("--output_dir", required=True, help="folder for the result files (one .txt and one .json "
                       "per dataset)")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return group


def decoding_options_from_flags(args, backend=None):
    """A :class:`DecodingOptions` from parsed flags (``language`` is resolved later, against the model)."""
    return DecodingOptions(task=args.task, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                           batch_size=args.batch_size, backend=backend or args.backend,
                           compute_type=args.compute_type, half_precision=args.half_precision)


def eval_config_from_flags(args, custom, backend=None, result_marker=None):
    """Build the :class:`EvalConfig` for parsed evaluator flags; ``backend`` overrides ``--backend``."""
    if custom:
        specs = tuple(DatasetSpec(name=path, split=None) for path in args.eval_datasets)
    else:
        specs = (DatasetSpec(name=args.dataset, config=args.config, split=args.split, text_column=args.text_column,
                             audio_column=args.audio_column),)
    return EvalConfig(datasets=specs, output_dir=args.output_dir, is_public_repo=args.is_public_repo,
                      hf_model=args.hf_model, ckpt_dir=args.ckpt_dir, temp_ckpt_folder=args.temp_ckpt_folder,
                      custom=custom, language=args.language, normalizer=args.normalizer,
                      max_samples=args.max_samples, device=args.device, num_workers=args.num_workers,
                      decoding=decoding_options_from_flags(args, backend), result_marker=result_marker)


def evaluator_main(doc, custom, argv=None, backend=None, result_marker=None):
    """The whole body of an evaluator script: parse flags, run :func:`evaluate`, print the summary table."""
    from .evaluation import evaluate
    from .scoring import summary_table

    parser = cli.parser(doc.split("\n\n")[0], "\n\n".join(doc.split("\n\n")[1:]))
    add_model_flags(parser)
    add_decoding_flags(parser, default_backend=backend or "pytorch")
    add_eval_flags(parser, custom)
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    results = evaluate(eval_config_from_flags(args, custom, backend, result_marker))
    print(summary_table(results))
    for row in results:
        print(f"results: {row['txt_path']}")
    return 0


def transcriber_main(doc, argv=None, backend=None):
    """The whole body of a transcription script: parse flags, run :func:`transcribe`, print the text."""
    from .transcription import DEFAULT_SEARCH_SECONDS, TranscribeConfig, transcribe

    parser = cli.parser(doc.split("\n\n")[0], "\n\n".join(doc.split("\n\n")[1:]))
    parser.add_argument("--path_to_audio", required=True, help="audio file (wav, flac, ogg, mp3; any rate, "
                        "mono or stereo, any length)")
    parser.add_argument("--output", default=None, help="also write the transcript to this file: .txt, .srt, "
                        ".vtt or .json (segments with start/end seconds)")
    parser.add_argument("--search_seconds", type=float, default=DEFAULT_SEARCH_SECONDS,
                        help="long audio is cut into pieces of at most 30 s, each cut at the quietest moment "
                             "within the last this many seconds of its window (more than 0, at most 15)")
    add_model_flags(parser)
    add_decoding_flags(parser, default_backend=backend or "pytorch")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    config = TranscribeConfig(path_to_audio=args.path_to_audio, is_public_repo=args.is_public_repo,
                              hf_model=args.hf_model, ckpt_dir=args.ckpt_dir, temp_ckpt_folder=args.temp_ckpt_folder,
                              language=args.language, device=args.device, output=args.output, search_seconds=args.search_seconds,
                              decoding=decoding_options_from_flags(args, backend))
    print(transcribe(config).text)
    return 0

"""The command-line side of every script: parse flags into config dataclasses, set up logging, map errors.

Only the shims import this module; library code never sees argparse. Each script's whole body is one
of the ``*_main`` functions below (or its own few lines built from :func:`options.parse`). Flags are parsed
before the code that runs them is imported: the option dataclasses live in modules that import neither
torch, transformers nor datasets, and each config module checks what needs neither those libraries nor the
contents of the model or the data, so ``-h``, a mistyped flag, a value no run could use and a model or dataset
folder that is not there answer at once, not after seconds of imports.
"""
import argparse
import logging
import sys
import warnings

from . import options
from .decode.config import TranscribeConfig, check_values as check_transcribe_values
from .errors import OptionError, Stopped, UserError
from .evaluate.config import EvalConfig, check_values as check_eval_values
from .signals import Terminated, terminate_raises
from .train.config import HF_ONLY, TrainConfig, check_values as check_train_values

# Loggers of libraries that report their internals at INFO (datasets lists the frameworks it found when
# first imported, before its own verbosity setting exists).
LIBRARY_LOGGERS = ("httpx", "urllib3", "filelock", "fsspec", "absl", "jax._src", "datasets", "transformers")


def setup_logging(verbose=False):
    """Log to stderr as ``message`` (INFO); with ``verbose`` as ``[module] message`` (DEBUG) with library warnings.

    Without ``verbose`` the libraries' own warnings are silenced here, in this one place: our code sets
    what they ask for explicitly (attention masks, generation settings), so what remains is noise about
    their internals that a user cannot act on. ``--verbose True`` shows all of it.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="[%(name)s] %(message)s" if verbose else "%(message)s", stream=sys.stderr, force=True)
    if verbose:
        return
    for noisy in LIBRARY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()


def parser(description, epilog=None):
    """An ``ArgumentParser`` that shows defaults and keeps the description's line breaks (for the benchmark
    scripts; every user script's flags come from :func:`options.parse`)."""
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=_Formatter)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def run(main, argv=None, flag_names=None):
    """Run ``main(argv)`` turning :class:`UserError` into ``error: ...`` on stderr and its exit status (2 for bad
    input; 75 for a full disk, which the same command survives once space is freed).

    ``flag_names`` maps option names to the script's flags where they differ (``OptionError`` names
    options). Ctrl-C exits with status 130 and SIGTERM with 143, each with a one-line message, after the
    stack has unwound (cleanup happens in the library's ``finally`` blocks, so nothing half-written is
    left, and DataLoader worker processes are shut down with the script). A training run stopped by
    either has saved a checkpoint first (:class:`Stopped`, its line already logged).
    """
    try:
        with terminate_raises():
            code = main(argv)
    except OptionError as exc:
        print(f"error: {exc.render(flag_names)}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_status)
    except Stopped as exc:
        sys.exit(exc.exit_status)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def train_main(doc, hf, argv=None):
    """The whole of both training scripts: parse the flags, train, print the summary on rank 0."""
    config, script = options.parse(TrainConfig, doc, argv, exclude=() if hf else HF_ONLY, fixed={"custom": not hf})
    check_train_values(config)  # before any import of the libraries: a bad value is refused at once
    setup_logging(script.verbose)
    from .train.run import train
    from .train.summary import format_summary

    summary = train(config)
    if summary.is_main_process:
        print(format_summary(summary))
    return 0


# Flags of one evaluator kind that the other does not have.
CUSTOM_ONLY_EVAL = ("eval_datasets",)
HF_ONLY_EVAL = ("dataset", "config", "split", "text_column", "audio_column")


def evaluator_main(doc, custom, argv=None, backend=None):
    """The whole body of an evaluator script: parse flags, run :func:`evaluate`, print the summary table.

    ``backend="jax"`` makes a JAX evaluator: ``--backend`` defaults to it and result files are marked ``jax``.
    """
    exclude = HF_ONLY_EVAL if custom else CUSTOM_ONLY_EVAL
    required = CUSTOM_ONLY_EVAL if custom else ("dataset",)
    fixed = {"custom": custom, "result_marker": backend}
    config, script = options.parse(EvalConfig, doc, argv, exclude=exclude, fixed=fixed, required=required,
                                   defaults={"backend": backend} if backend else None)
    check_eval_values(config)  # before any import of the libraries: a bad value is refused at once
    setup_logging(script.verbose)
    from .evaluate.evaluation import evaluate
    from .scoring import summary_table

    results = evaluate(config)
    print(summary_table(results))
    for row in results:
        print(f"results: {row.txt_path}")
    return 0


def transcriber_main(doc, argv=None, backend=None):
    """The whole body of a transcription script: parse flags, run :func:`transcribe`, print the text."""
    config, script = options.parse(TranscribeConfig, doc, argv, defaults={"backend": backend} if backend else None)
    check_transcribe_values(config)  # before any import of the libraries: a bad value is refused at once
    setup_logging(script.verbose)
    from .decode.transcription import transcribe

    print(transcribe(config).text)
    return 0

"""Helpers shared by the command-line shims: boolean flags, logging set-up, error handling.

Only the shims import this module; library code never sees argparse.
"""
import argparse
import logging
import sys

from .errors import UserError

TRUE_WORDS = ("true", "1", "yes", "y")
FALSE_WORDS = ("false", "0", "no", "n")


def str2bool(value):
    """Parse ``True``/``False`` in any case (and 1/0, yes/no) for flags like ``--is_public_repo``."""
    word = str(value).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def none_or_str(value):
    """``None`` (any case) -> ``None``; anything else unchanged (for ``--resume_from_ckpt None``)."""
    return None if str(value).strip().lower() == "none" else value


def parser(description, epilog=None):
    """An ``ArgumentParser`` that shows defaults and keeps the description's line breaks."""
    return argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=_Formatter)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def setup_logging(verbose=False):
    """Log to stderr as ``[whisper_finetune] message``; INFO by default, DEBUG with ``verbose``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="[%(name)s] %(message)s" if verbose else "%(message)s", stream=sys.stderr)
    for noisy in ("httpx", "urllib3", "filelock", "fsspec", "absl", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main, argv=None):
    """Run ``main(argv)`` turning :class:`UserError` into ``error: ...`` on stderr and exit status 2.

    Ctrl-C exits with status 130 and a one-line message (cleanup happens in the library's
    ``finally`` blocks, so nothing half-written is left).
    """
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


"""Language names and codes, and the text normalisers used for scoring.

Normalisers (chosen by :func:`choose_normalizer`, overridable with ``--normalizer``):

* ``english``: Whisper's English normaliser (spelling, numbers, contractions; ``Mr.`` == ``mister``).
* ``unicode``: for every non-English language, whatever its script. Unicode NFKC (full-width
  forms become ASCII, composed and decomposed letters compare equal), case-folded where the script
  has case, punctuation and symbols (Unicode categories P* and S*: the danda, full-width and CJK
  punctuation included) become spaces, whitespace collapsed. Combining marks (category M: Indic
  vowel signs, virama, nukta, Arabic harakat, Thai vowel and tone marks, Vietnamese tone marks,
  kana voicing marks) are kept, so a one-mark error still counts as an error. ``indic`` is its
  former name and stays an alias, so older commands and result files keep working.
* ``basic``: transformers' ``BasicTextNormalizer``, kept only for comparison with other tools. It
  turns every combining mark into a space and so scores abugida scripts (Devanagari, Telugu, ...)
  wrongly; never the default.
* ``none``: whitespace collapsed, nothing else.
"""
import json
import os
import re
import unicodedata
from functools import lru_cache

from .errors import UserError

# transformers is imported where it is first needed, not here: the option dataclasses import this module
# for METRICS and NORMALIZERS, and a script's -h must not wait a second for transformers to load.


def byte_level_alphabet():
    """GPT-2's byte-level BPE table ``{byte: character}``, which Whisper's vocabulary is written in.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, soft hyphen) are
    moved, in byte order, to code points 256 and up, so every token is a visible string. The table is
    fixed by the tokenizer format (the ggml writer inverts it); transformers keeps its copy in a
    tokenizer-conversion module, not a public API.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    moved = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return dict(sorted(table.items()))


NORMALIZERS = ("english", "unicode", "indic", "basic", "none")
NORMALIZER_ALIASES = {"indic": "unicode"}  # the name it had before it was named for what it does
METRICS = ("wer", "cer")
# Languages written without spaces between words: a "word" there is whatever run the decoder happened
# to space, so WER measures spacing, not recognition. Scored by characters, as openai/whisper and the
# Open ASR Leaderboard do: Chinese, Japanese, Thai, Lao, Burmese, Cantonese, Khmer, Tibetan.
CER_LANGUAGES = ("zh", "ja", "th", "lo", "my", "yue", "km", "bo")

_SPELLING_FILE = os.path.join(os.path.dirname(__file__), "english_spelling.json")  # OpenAI's english.json
_WHITESPACE = re.compile(r"\s+")


@lru_cache(maxsize=None)
def whisper_languages():
    """Whisper's ``{code: name}`` table and its ``{name or alias: code}`` inverse, as transformers holds them."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    return LANGUAGES, TO_LANGUAGE_CODE


def language_code(language):
    """Map a language name (``Hindi``, ``hindi``) or code (``hi``) to Whisper's code; ``None`` passes.

    Raises :class:`UserError` listing a few accepted values for anything Whisper does not know.
    """
    if language is None or str(language).strip().lower() in ("", "none"):
        return None
    key = str(language).strip().lower()
    key = key[2:-2] if key.startswith("<|") and key.endswith("|>") else key
    languages, codes = whisper_languages()
    if key in languages:
        return key
    if key in codes:
        return codes[key]
    examples = ", ".join(f"{name.title()} ({code})" for code, name in list(languages.items())[:6])
    raise UserError(f"unknown language {language!r}: use a Whisper language name or code, e.g. {examples}; "
                    f"{len(languages)} are accepted")


def language_name(code):
    """The English name Whisper uses for a language code (``hi`` -> ``hindi``)."""
    return whisper_languages()[0][code]


def unicode_normalize(text):
    """Normalise text of any script without touching combining marks (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    kept = [" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text]
    return _WHITESPACE.sub(" ", "".join(kept)).strip()


def no_normalize(text):
    """Collapse whitespace only."""
    return _WHITESPACE.sub(" ", text).strip()


@lru_cache(maxsize=None)
def get_normalizer(name):
    """Return the normaliser called ``name`` (one of :data:`NORMALIZERS`) as a ``str -> str`` function."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if name == "english":
        with open(_SPELLING_FILE, encoding="utf-8") as f:
            english = EnglishTextNormalizer(json.load(f))
        return lambda text: no_normalize(english(text))
    if NORMALIZER_ALIASES.get(name, name) == "unicode":
        return unicode_normalize
    if name == "basic":
        basic = BasicTextNormalizer()
        return lambda text: no_normalize(basic(text))
    if name == "none":
        return no_normalize
    raise UserError(f"unknown normalizer {name!r}: choose one of {', '.join(NORMALIZERS)}")


def choose_normalizer(language, requested=None, english_only_model=False):
    """Pick the normaliser: ``requested`` when given (``indic`` read as ``unicode``), else ``english`` for
    English, else ``unicode``."""
    if requested:
        get_normalizer(requested)  # validates the name
        return NORMALIZER_ALIASES.get(requested, requested)
    if english_only_model or language_code(language) == "en":
        return "english"
    return "unicode"


def choose_metric(language, requested=None):
    """The primary metric: ``requested`` when given, else ``cer`` for languages written without spaces
    between words (:data:`CER_LANGUAGES`), else ``wer``."""
    if requested:
        if requested not in METRICS:
            raise UserError(f"--primary_metric {requested}: choose one of {', '.join(METRICS)}")
        return requested
    return "cer" if language_code(language) in CER_LANGUAGES else "wer"

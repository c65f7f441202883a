"""Build the sets that tell whether a fine-tune on ../shared/data/espeak_en/train (or espeak_hi/train)
generalises.

* ``en_other_voices/{retain,test}``: sentences of the training grammar spoken by espeak-ng voices the
  training set never had (``--voices``), two disjoint halves: ``retain`` to choose checkpoints and
  recipes by, ``test`` to report;
* ``en_unseen_words/test``: sentences built from subjects, verbs, objects and places that never occur
  in the training grammar, in the training voice (en-us): does the model still write words it was
  not tuned on?

With ``--language hi`` the same for Hindi (``hi_other_voices/{retain,test}``, ``hi_unseen_words/test``):
espeak-ng has one Hindi voice, so the other speakers are its voice variants (``hi+m2``: other formants,
pitch and breathiness; ``hi+klatt``: another synthesiser), which the training set (plain ``hi``) never had.

With ``--train_voices`` also ``<language>_several_voices/train``: the training set's own sentences, each
spoken by one of several voices none of the other-voice sets has, for training on a few speakers and
testing on others.

Each set is a Kaldi-style folder (``text`` + ``audio_paths``) for custom_data/data_prep.py. Speech
comes from ``../shared/data/make_data.py`` (espeak-ng, a Debian package); the sets are built, never
committed.

examples:
  python3 bench/generalisation_sets.py --output /tmp/gen
  python3 bench/generalisation_sets.py --language hi --output /tmp/gen_hi
  python3 bench/generalisation_sets.py --language hi --train_voices hi,hi+m1,hi+f1,hi+klatt3 --output /tmp/gen_hi4
"""
import importlib.util
import os
import random
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402

DEFAULT_MAKE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                 "data", "make_data.py")
# Voices other than the training set's en-us: three accents of espeak-ng's own English.
DEFAULT_VOICES = {"en": "en-gb-scotland,en-gb-x-rp,en-029",
                  # espeak-ng voice variants of its Hindi voice: two male, two female, one Klatt synthesiser
                  "hi": "hi+m2,hi+m4,hi+f2,hi+f4,hi+klatt"}
# Words the training grammar (make_data.EN) never uses, one list per slot of its sentence pattern.
UNSEEN_EN = {
    "subj": ["the gardener", "a bearded fisherman", "my cousin", "the librarian", "a tall soldier", "the waiter",
             "her grandfather", "the clever artist", "a busy mechanic", "the shy girl"],
    "verb": ["polished", "wrapped", "delivered", "hid", "lifted", "examined", "returned", "folded", "stole", "fixed"],
    "obj": ["a steel spoon", "the purple umbrella", "six orange candles", "a plastic cup", "the dusty piano",
            "nine white shirts", "a rusty bicycle", "the golden mirror", "two black kettles", "a cotton scarf"],
    "where": ["near the airport", "behind the museum", "at the factory", "in the afternoon", "after lunch",
              "throughout the concert", "inside the cave", "beside the lake", "under the stairs", "at midnight"],
}
# The same for make_data.HI's pattern "<subj> ने <where> <obj> <verb>।"
UNSEEN_HI = {
    "subj": ["मेरे दादा", "वह लड़की", "एक सिपाही", "हमारी दादी", "नया मैनेजर", "बूढ़ा माली", "उसका दोस्त",
             "एक मछुआरा", "मोहन", "पुलिस वाला"],
    "where": ["अस्पताल में", "दफ़्तर में", "बगीचे में", "पहाड़ पर", "दोपहर को", "पुल के पास", "कमरे में",
              "सड़क पर", "जंगल में", "रसोई में"],
    "obj": ["चावल", "अख़बार", "बिस्तर", "घड़ी", "चाबी", "जूते", "तस्वीर", "दवाई", "कंबल", "शीशा"],
    "verb": ["सिला", "जलाया", "तोड़ा", "गिराया", "पकड़ा", "छिपाया", "सजाया", "माँगा", "चुराया", "धोया"],
}
# Function words the unseen lists may share with the training grammar.
SHARED_WORDS = {"the", "a", "an", "at", "in", "near", "behind", "after", "under", "beside", "inside", "my",
                "ने", "में", "पर", "को", "के", "पास", "एक", "वह"}


def load_make_data(path):
    spec = importlib.util.spec_from_file_location("make_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unseen_sentence_en(rng):
    return (f"{rng.choice(UNSEEN_EN['subj'])} {rng.choice(UNSEEN_EN['verb'])} {rng.choice(UNSEEN_EN['obj'])} "
            f"{rng.choice(UNSEEN_EN['where'])}").capitalize() + "."


def unseen_sentence_hi(rng):
    return (f"{rng.choice(UNSEEN_HI['subj'])} ने {rng.choice(UNSEEN_HI['where'])} {rng.choice(UNSEEN_HI['obj'])} "
            f"{rng.choice(UNSEEN_HI['verb'])}।")


# Per language: make_data's grammar, sentence maker and training voice; our unseen lists and their sentences.
LANGUAGES = {"en": ("EN", "sentence_en", "en-us", UNSEEN_EN, unseen_sentence_en),
             "hi": ("HI", "sentence_hi", "hi", UNSEEN_HI, unseen_sentence_hi)}


def espeak_voices():
    """``(voices, variants)`` of the installed espeak-ng as ``-v voice+variant`` takes them: each voice by its
    language code and its file name, lower case (``hi``, ``en-us``: it ignores their case), each variant by
    its file name as written (``m1``, ``Alex``: ``hi+M1`` is spoken as plain ``hi``)."""
    if shutil.which("espeak-ng") is None:
        raise UserError("espeak-ng is not installed (apt-get install espeak-ng): it speaks every set")

    def rows(which):  # columns: Pty, Language, Age/Gender, VoiceName, File, Other Languages
        listing = subprocess.run(["espeak-ng", f"--voices={which}" if which else "--voices"], capture_output=True,
                                 text=True, check=True).stdout
        return [line.split() for line in listing.splitlines()[1:] if len(line.split()) >= 5]

    voices = {name.lower() for row in rows(None) for name in (row[1], row[4].rsplit("/", 1)[-1])}
    return voices, {row[4].rsplit("/", 1)[-1] for row in rows("variant")}


def check_voices(flag, voices, known):
    """Refuse, naming it, a voice or variant this espeak-ng lacks: it would otherwise stop the build half-way
    (an unknown voice) or quietly speak the plain voice (an unknown variant)."""
    known_voices, known_variants = known
    for voice in voices:
        base, _, variant = voice.partition("+")
        if base.lower() not in known_voices:
            raise UserError(f"{flag} {voice}: espeak-ng has no voice '{base}' "
                            f"(its voices: {', '.join(sorted(known_voices))})")
        if variant and variant not in known_variants:
            raise UserError(f"{flag} {voice}: espeak-ng has no voice variant '{variant}' "
                            f"(its variants: {', '.join(sorted(known_variants))})")


def same_voice_in(voice, voices):
    """Whether ``voices`` holds ``voice``'s espeak-ng voice: the voice's case ignored, the variant's not."""
    def key(v):
        base, plus, variant = v.partition("+")
        return base.lower() + plus + variant

    return key(voice) in {key(v) for v in voices}


def build(output, make_data_path=DEFAULT_MAKE_DATA, voices=None, size=80, seed=11, language="en", train_voices=None):
    make_data = load_make_data(make_data_path)
    grammar, sentence, training_voice, unseen, unseen_sentence = LANGUAGES[language]
    trained = {w for slot in getattr(make_data, grammar).values() for phrase in slot for w in phrase.split()}
    clash = sorted({w for slot in unseen.values() for phrase in slot for w in phrase.split()} & trained
                   - SHARED_WORDS)
    if clash:  # function words aside, no word of the unseen set may occur in the training grammar
        raise UserError(f"unseen-word lists share words with the training grammar: {', '.join(clash)}")
    rng = random.Random(seed)
    with open(os.path.join(os.path.dirname(make_data_path), f"espeak_{language}", "train", "text"),
              encoding="utf-8") as f:
        train_texts = [line.split(" ", 1)[1].strip() for line in f if line.strip()]
    other = make_data.unique(getattr(make_data, sentence), rng, 2 * size, exclude=train_texts)
    voice_list = (voices or DEFAULT_VOICES[language]).split(",")
    make_data.write_set(output, f"{language}_other_voices/retain", other[:size], voice_list, rng)
    make_data.write_set(output, f"{language}_other_voices/test", other[size:], voice_list, rng)
    make_data.write_set(output, f"{language}_unseen_words/test", make_data.unique(unseen_sentence, rng, size),
                        [training_voice], rng)
    if train_voices:
        # The training sentences again, each in one of several voices; a generator of its own, so that the
        # sets above stay the same with or without this one.
        make_data.write_set(output, f"{language}_several_voices/train", train_texts, train_voices.split(","),
                            random.Random(seed + 1))


def main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--output", required=True, help="folder to create (must not exist)")
    p.add_argument("--make_data", default=DEFAULT_MAKE_DATA, help="path of ../shared/data/make_data.py")
    p.add_argument("--language", default="en", choices=sorted(LANGUAGES),
                   help="en: sets for espeak_en/train; hi: sets for espeak_hi/train")
    p.add_argument("--voices", default=None,
                   help="comma-separated espeak-ng voices of the other-voice sets (default: "
                        + "; ".join(f"{k}: {v}" for k, v in DEFAULT_VOICES.items()) + ")")
    p.add_argument("--train_voices", default=None,
                   help="comma-separated espeak-ng voices: also write <language>_several_voices/train, the "
                        "training set's sentences each spoken by one of them (none of --voices may be among "
                        "them), to train on several speakers and test on others, e.g. hi,hi+m1,hi+f1,hi+klatt3")
    p.add_argument("--size", type=int, default=80, help="sentences per set")
    p.add_argument("--seed", type=int, default=11, help="seed of sentences, voices, speeds and pitches")
    args = p.parse_args(argv)
    if os.path.exists(args.output):
        raise UserError(f"--output {args.output}: already exists")
    if not os.path.isfile(args.make_data):
        raise UserError(f"--make_data {args.make_data}: no such file")
    test_voices = (args.voices or DEFAULT_VOICES[args.language]).split(",")
    train_voices = args.train_voices.split(",") if args.train_voices else []
    known = espeak_voices()
    check_voices("--voices", test_voices, known)
    check_voices("--train_voices", train_voices, known)
    heard = [v for v in train_voices if same_voice_in(v, test_voices)]
    if heard:
        raise UserError(f"--train_voices {','.join(heard)}: also an other-voice set's voice "
                        f"({','.join(test_voices)}); those must stay unheard in training")
    build(args.output, args.make_data, args.voices, args.size, args.seed, args.language, args.train_voices)
    lang = args.language
    print(f"wrote {args.output}/{lang}_other_voices/{{retain,test}} and {args.output}/{lang}_unseen_words/test"
          + (f" and {args.output}/{lang}_several_voices/train" if args.train_voices else ""))
    return 0


if __name__ == "__main__":
    cli.run(main)

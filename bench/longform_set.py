"""Build a long-form set from a Kaldi-style folder of short clips: recordings of 60-120 s made of its
clips joined by random pauses, written as a Kaldi data directory with the true time of every sentence.

The output folder holds ``wav.scp`` (``<recording-id> <path>``), ``segments``
(``<utt-id> <recording-id> <start> <end>``, seconds, the true span of each clip in its recording),
``text`` and ``audio/<recording-id>.flac``: what ``custom_data/data_prep.py`` reads to train with
``--timestamps True``, and what ``bench/longform_eval.py`` scores cue times against. Nothing new is
recorded: the clips are the source's own (``../shared/data/espeak_en/train`` to train on,
``.../eval`` to test on), so the set needs no data beyond ``../shared``.

example:
  python3 bench/longform_set.py --source ../shared/data/espeak_en/eval --output /tmp/lf/eval --seed 1
  python3 bench/longform_set.py --source ../shared/data/espeak_en/train --output /tmp/lf/train --copies 4
"""
import os
import random
import sys

import numpy as np
import soundfile as sf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402
from whisper_finetune.audio import SAMPLE_RATE, load_audio  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402

# Clips start on whole milliseconds, so the 3-decimal times of the segments file are exact.
SAMPLES_PER_MS = SAMPLE_RATE // 1000


def read_table(path):
    """``<id> <rest of line>`` lines as a dict, in file order."""
    with open(path, encoding="utf-8") as f:
        return dict(line.rstrip("\n").split(" ", 1) for line in f if line.strip())


def build(source, output, seed=0, copies=1, min_seconds=60.0, max_seconds=120.0, min_pause=0.3, max_pause=1.5):
    """Write the long-form set; returns the number of recordings. Each copy is another shuffle of all
    the clips (new neighbours, new pauses), so ``copies`` > 1 gives more distinct windows to train on."""
    texts = read_table(os.path.join(source, "text"))
    paths = read_table(os.path.join(source, "audio_paths"))
    clips = {uid: load_audio(p if os.path.isabs(p) else os.path.join(source, p)) for uid, p in paths.items()}
    rng = random.Random(seed)
    os.makedirs(os.path.join(output, "audio"))
    wav_scp, segments, text_lines = [], [], []
    for copy in range(copies):
        order = list(clips)
        rng.shuffle(order)
        while order:
            target = rng.uniform(min_seconds, max_seconds)
            recording_id = f"long{copy:02d}{len(wav_scp):03d}"
            pieces, position = [], 0.0
            # A recording starts with a pause too: speech at 0.00 s would make every first cue trivial.
            while order and (position < target or not pieces):
                pause = rng.uniform(min_pause, max_pause)
                clip = clips[order[0]]
                if pieces and position + pause + len(clip) / SAMPLE_RATE > max_seconds:
                    break
                uid = order.pop(0)
                silence = int(round(pause * SAMPLE_RATE))
                silence += -(sum(len(p) for p in pieces) + silence) % SAMPLES_PER_MS  # start on a whole millisecond
                pieces.append(np.zeros(silence, np.float32))
                start = sum(len(p) for p in pieces) / SAMPLE_RATE
                pieces.append(clip)
                end = start + len(clip) / SAMPLE_RATE
                segments.append(f"{recording_id}-{uid} {recording_id} {start:.3f} {end:.3f}")
                text_lines.append(f"{recording_id}-{uid} {texts[uid]}")
                position = end
            pieces.append(np.zeros(int(round(rng.uniform(min_pause, max_pause) * SAMPLE_RATE)), np.float32))
            path = os.path.join("audio", f"{recording_id}.flac")
            sf.write(os.path.join(output, path), np.concatenate(pieces), SAMPLE_RATE)
            wav_scp.append(f"{recording_id} {path}")
    for name, lines in (("wav.scp", wav_scp), ("segments", segments), ("text", text_lines)):
        with open(os.path.join(output, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    return len(wav_scp)


def main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--source", required=True, help="Kaldi-style folder with text and audio_paths")
    p.add_argument("--output", required=True, help="folder to create (must not exist)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clip order and pauses")
    p.add_argument("--copies", type=int, default=1, help="how many times every clip is used (each time reshuffled)")
    p.add_argument("--min_seconds", type=float, default=60.0, help="a recording ends after this many seconds...")
    p.add_argument("--max_seconds", type=float, default=120.0, help="...and never lasts longer than this")
    p.add_argument("--min_pause", type=float, default=0.3, help="shortest pause before each clip (seconds)")
    p.add_argument("--max_pause", type=float, default=1.5, help="longest pause before each clip (seconds)")
    args = p.parse_args(argv)
    if os.path.exists(args.output):
        raise UserError(f"--output {args.output}: already exists")
    for name in ("text", "audio_paths"):
        if not os.path.isfile(os.path.join(args.source, name)):
            raise UserError(f"--source {args.source}: no {name} file")
    if not (0 < args.min_pause <= args.max_pause and 0 < args.min_seconds <= args.max_seconds and args.copies >= 1):
        raise UserError("need 0 < --min_pause <= --max_pause, 0 < --min_seconds <= --max_seconds, --copies >= 1")
    count = build(args.source, args.output, args.seed, args.copies, args.min_seconds, args.max_seconds,
                  args.min_pause, args.max_pause)
    print(f"{count} recordings in {args.output}")
    return 0


if __name__ == "__main__":
    cli.run(main)

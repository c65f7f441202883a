"""Benchmark custom_data/data_prep.py: clips/s and peak memory as the corpus grows.

Generates corpora of N clips (synthetic 44.1 kHz stereo, so decoding, down-mixing and resampling all run):
Kaldi-style folders of 16-bit WAV (--format kaldi), or Common Voice releases of MP3 clips (--format
common_voice: train.tsv + clips/, MP3 decoding); prepares each with data_prep.py in a child process, and
reports wall time, clips/s and the peak RSS and anonymous memory of the child's process tree (data_prep and
its --num_proc workers, summed). Flat peak memory across sizes shows that nothing holds the whole corpus in
memory.

usage: python bench/data_prep_speed.py [--format kaldi|common_voice] [--sizes 1000 10000] [--num_proc 2]
                                       [--out bench/out/data_prep_speed.json]
"""
import argparse
import os
import shutil
import sys
import tempfile

import soundfile as sf

from common import REPO_ROOT, print_table, run_measured, write_json

from whisper_finetune.testing import synthetic_speech

UNIQUE_FILES = 50  # distinct audio files; ids beyond this reuse them (decoding cost is per clip either way)
CV_COLUMNS = ("client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
              "gender", "accents", "variant", "locale", "segment")  # a Common Voice release's train.tsv


def make_corpus(folder, n, seconds, rate):
    """Write ``n`` entries of text/audio_paths over ``UNIQUE_FILES`` generated stereo clips."""
    os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
    for i in range(min(n, UNIQUE_FILES)):
        sf.write(os.path.join(folder, "audio", f"clip{i:03d}.wav"),
                 synthetic_speech(seconds + 0.01 * i, rate, seed=i, channels=2), rate, subtype="PCM_16")
    with open(os.path.join(folder, "text"), "w") as text, open(os.path.join(folder, "audio_paths"), "w") as paths:
        for i in range(n):
            text.write(f"utt{i:06d} sentence number {i} of the benchmark corpus\n")
            paths.write(f"utt{i:06d} audio/clip{i % UNIQUE_FILES:03d}.wav\n")


def make_common_voice(folder, n, seconds, rate):
    """Write a Common Voice release of ``n`` MP3 clips: ``UNIQUE_FILES`` encoded stereo clips, each clip file a
    hard link to one of them (Common Voice ids are clip file names, so every row needs its own file)."""
    os.makedirs(os.path.join(folder, "clips"), exist_ok=True)
    unique = os.path.join(folder, "unique")
    os.makedirs(unique, exist_ok=True)
    for i in range(min(n, UNIQUE_FILES)):
        sf.write(os.path.join(unique, f"clip{i:03d}.mp3"),
                 synthetic_speech(seconds + 0.01 * i, rate, seed=i, channels=2), rate, format="MP3")
    with open(os.path.join(folder, "train.tsv"), "w", encoding="utf-8") as tsv:
        tsv.write("\t".join(CV_COLUMNS) + "\n")
        for i in range(n):
            name = f"common_voice_en_{i:06d}.mp3"
            os.link(os.path.join(unique, f"clip{i % UNIQUE_FILES:03d}.mp3"), os.path.join(folder, "clips", name))
            row = {"client_id": f"speaker{i % 20:02d}", "path": name, "sentence": f'"Sentence" number {i} of the '
                   f"benchmark corpus", "up_votes": "2", "down_votes": "0", "locale": "en"}
            tsv.write("\t".join(row.get(c, "") for c in CV_COLUMNS) + "\n")


MAKERS = {"kaldi": make_corpus, "common_voice": make_common_voice}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=tuple(MAKERS), default="kaldi",
                        help="corpus to generate: Kaldi-style WAV, or a Common Voice release of MP3 clips")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="corpus sizes (clips)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each clip")
    parser.add_argument("--rate", type=int, default=44100, help="sample rate of the generated clips")
    parser.add_argument("--num_proc", type=int, default=2, help="data_prep --num_proc")
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "bench", "out", "data_prep_speed.json"))
    args = parser.parse_args()
    rows = []
    work = tempfile.mkdtemp(prefix="bench-data-prep-")
    try:
        for n in args.sizes:
            source, out = os.path.join(work, f"src{n}"), os.path.join(work, f"out{n}")
            MAKERS[args.format](source, n, args.seconds, args.rate)
            wall, memory, _ = run_measured([sys.executable, "custom_data/data_prep.py", "--source_data_dir", source,
                                          "--output_data_dir", out, "--num_proc", str(args.num_proc),
                                          "--format", args.format])
            rows.append({"clips": n, "seconds": round(wall, 1), "clips_per_s": n / wall, **memory,
                         "audio_hours": n * args.seconds / 3600})
            shutil.rmtree(source)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = print_table(rows, ["clips", "seconds", "clips_per_s", "peak_rss_gb", "peak_anon_gb", "audio_hours"])
    write_json(args.out, {"benchmark": "data_prep_speed", "settings": vars(args), "rows": rows, "table": table})


if __name__ == "__main__":
    main()

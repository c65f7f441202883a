"""Benchmark the hallucination guards and long-form decoding on timestamps: what a model writes for audio
without speech, and how the two segmentations of a long recording compare.

Synthesised audio (seeded numpy, written to --work_dir): 60 s of silence with low noise (Gaussian,
-50 dBFS) and 60 s of music-like tones (notes of a pentatonic scale with harmonics and a decaying
envelope over a soft drone). Each is transcribed with transcribe_audio.py's library function
(whisper_finetune.decode.transcription.transcribe) three ways, on the default cut-at-silence path and again
with --timestamps True:

  plain        no guard (today's decoding)
  thresholds   Whisper's thresholds with its temperature fallback: --temperature_fallback
               0.0,0.2,0.4,0.6,0.8,1.0 --compression_ratio_threshold 2.4 --logprob_threshold -1.0
               --no_speech_threshold 0.6 (and --condition_on_previous_text True on timestamps)
  vad          --vad True (Silero VAD removes the non-speech first)

There are no words in this audio: every word written is a hallucination ("words" counts runs of letters
and digits, so a cue of "." writes none). Then longform/long_en.flac (80 s of sentences) with today's
cut-at-silence path and with --timestamps True (alone, with --vad True, with Whisper's thresholds), and
both paths again with beam search (--num_beams 5; on timestamps with --condition_on_previous_text True,
openai/whisper's and faster-whisper's defaults): WER against long_en.txt (english normaliser), number of
cues and the longest one.

Rows are named <audio>_<path>[_<guards>] (silence_cut_plain, tones_timestamps_vad, long_timestamps, ...);
--rows picks a subset. Each row runs in its own child process (this script with --only ROW), one after
another; RTFx = audio seconds / seconds from the loaded audio to the segments (VAD, features and
decoding; model loading excluded).

example:
  python3 bench/hallucination.py --model ../shared/models/whisper-tiny.en --data ../shared/data \\
      --out bench/out/hallucination.json
"""
import json
import os
import re
import sys

from common import (REPO_ROOT, add_row_process_flags, failure_line, parent_settings, run_measured, work_folder,
                    write_json)

from whisper_finetune import cli  # noqa: E402
from whisper_finetune.audio import SAMPLE_RATE  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402
from whisper_finetune.testing import no_speech_audio  # noqa: E402

SYNTH_SECONDS = 60
WHISPER_GUARDS = ["--temperature_fallback", "0.0,0.2,0.4,0.6,0.8,1.0", "--compression_ratio_threshold", "2.4",
                  "--logprob_threshold", "-1.0", "--no_speech_threshold", "0.6"]
GUARDS = {"plain": [], "thresholds": WHISPER_GUARDS, "vad": ["--vad", "True"], "beam5": ["--num_beams", "5"]}
GUARD_NAMES = {"plain": "none", "thresholds": "Whisper's thresholds + fallback", "vad": "VAD",
               "beam5": "beam search (5)"}
CONDITIONED = ("thresholds", "beam5")  # on timestamps these add --condition_on_previous_text True, as Whisper does
PATHS = {"cut": [], "timestamps": ["--timestamps", "True"]}
ROWS = tuple(f"{audio}_{path}_{guards}" for audio in ("silence", "tones") for path in PATHS for guards in GUARDS) + \
    ("long_cut", "long_timestamps", "long_timestamps_vad", "long_timestamps_thresholds", "long_cut_beam5",
     "long_timestamps_beam5")
COLUMNS = ["row", "audio", "segmentation", "guards", "words", "wer", "cues", "longest_cue_s", "rtfx", "text", "error"]


def row_parts(name):
    """``(audio, path, guards, flags)`` of a row named ``<audio>_<path>[_<guards>]``."""
    audio, path, *rest = name.split("_")
    guards = rest[0] if rest else "plain"
    flags = PATHS[path] + GUARDS[guards]
    if guards in CONDITIONED and path == "timestamps":
        flags += ["--condition_on_previous_text", "True"]  # Whisper's default, on the path that has previous text
    return audio, path, guards, flags


def run_row(args):
    """Transcribe one row's audio in this process and write its figures to --row_json."""
    import jiwer

    from whisper_finetune.options import parse
    from whisper_finetune.text import get_normalizer
    from whisper_finetune.decode.config import TranscribeConfig
    from whisper_finetune.decode.transcription import transcribe

    audio, _, _, flags = row_parts(args.only)
    audio_path = long_audio(args.data) if audio == "long" else os.path.join(args.work_dir, f"{audio}.flac")
    config, _ = parse(TranscribeConfig, "transcribe", ["--hf_model", args.model, "--path_to_audio", audio_path,
                                                       "--device", str(args.device), *flags])
    transcript = transcribe(config)
    cues = [s.end - s.start for s in transcript.segments]
    words = re.findall(r"\w+", transcript.text)  # a cue of "." writes no word
    figures = {"segmentation": transcript.metadata["segmentation"], "words": len(words), "flags": " ".join(flags),
               "cues": len(cues), "longest_cue_s": round(max(cues), 2) if cues else 0.0,
               "decode_s": transcript.decode_seconds, "audio_s": transcript.duration,
               "rtfx": transcript.duration / transcript.decode_seconds, "text": transcript.text}
    if audio == "long":
        english = get_normalizer("english")
        with open(os.path.splitext(audio_path)[0] + ".txt", encoding="utf-8") as f:
            figures["wer"] = jiwer.wer(english(f.read()), english(transcript.text))
    with open(args.row_json, "w", encoding="utf-8") as f:
        json.dump(figures, f)


def long_audio(data):
    return os.path.join(data, "longform", "long_en.flac")


def measure_rows(args):
    """Run each selected row in its own child; a failing row becomes an error row."""
    rows = []
    for name in args.rows:
        audio, path, guards, _ = row_parts(name)
        row_json = os.path.join(args.work_dir, f"{name}.json")
        row = {"row": name, "audio": {"long": "long_en.flac"}.get(audio, f"{SYNTH_SECONDS} s {audio}"),
               "guards": GUARD_NAMES[guards] + (" + condition" if guards in CONDITIONED and path == "timestamps"
                                                else "")}
        command = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--data", args.data,
                   "--work_dir", args.work_dir, "--device", str(args.device), "--only", name, "--row_json", row_json]
        try:
            _, memory, _ = run_measured(command, env={"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
            with open(row_json, encoding="utf-8") as f:
                figures = json.load(f)
        except RuntimeError as exc:
            rows.append({**row, "error": failure_line(exc)})
            print(f"{name}: FAILED: {rows[-1]['error']}", file=sys.stderr)
            continue
        rows.append({**row, **figures, **memory})
        print(f"{name}: {figures['words']} words, {figures['cues']} cues, RTFx {figures['rtfx']:.1f}", file=sys.stderr)
    for row in rows:
        for column in COLUMNS:
            row.setdefault(column, "" if column == "error" else "-")
    return rows


def markdown_table(rows):
    """The rows as a Markdown table (texts cut to 60 characters)."""
    def cell(column, value):
        if column == "text":
            value = value if len(value) <= 60 else value[:57] + "..."
            return f"`{value}`" if value else "(empty)"
        if isinstance(value, float):
            return f"{value:.3f}" if column == "wer" else f"{value:.1f}"
        return str(value).replace("|", "&#124;")

    columns = [c for c in COLUMNS if c != "error" or any(r["error"] for r in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def check_args(args):
    """Validate flags before any long work."""
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        raise UserError(f"--rows {' '.join(unknown)}: unknown row(s); choose from {', '.join(ROWS)}")
    if not os.path.isdir(args.model):
        raise UserError(f"--model {args.model}: no such folder (a transformers-format Whisper checkpoint)")
    if any(r.startswith("long_") for r in args.rows) and not os.path.isfile(long_audio(args.data)):
        raise UserError(f"--data {args.data}: no longform/long_en.flac in it (the shared data folder)")


def build_parser():
    parser = cli.parser(__doc__.split("\n\n")[0], "\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--model", required=True, help="transformers-format Whisper checkpoint folder (stock "
                        "whisper-tiny.en for the table of docs/studies/longform.md)")
    parser.add_argument("--data", default=os.path.join(os.path.dirname(REPO_ROOT), "shared", "data"),
                        help="the shared data folder, holding longform/long_en.flac and long_en.txt")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"rows to run, in this order (default: all "
                        f"of {' '.join(ROWS)})")
    parser.add_argument("--device", type=int, default=-1, help="-1: CPU; N: GPU N")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthesised audio")
    return add_row_process_flags(parser, "hallucination", "the synthesised audio and the rows' figures")


def main(argv=None):
    args = build_parser().parse_args(argv)
    cli.setup_logging()
    if args.only:
        run_row(args)
        return 0
    check_args(args)
    import soundfile as sf

    with work_folder(args, "hallucination"):
        for kind in ("silence", "tones"):
            sf.write(os.path.join(args.work_dir, f"{kind}.flac"), no_speech_audio(kind, SYNTH_SECONDS, seed=args.seed),
                     SAMPLE_RATE)
        rows = measure_rows(args)
    table = markdown_table(rows)
    device = "CPU" if args.device < 0 else f"GPU {args.device}"
    print(f"\n{os.path.basename(os.path.normpath(args.model))}, greedy (num_beams 1) unless the guards say beam "
          f"search, {device}; WER of long_en.flac normalised with 'english'\n")
    print(table)
    write_json(args.out, {"benchmark": "hallucination", "settings": {**parent_settings(args), "guards": WHISPER_GUARDS},
                          "rows": rows, "table": table})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    cli.run(main)

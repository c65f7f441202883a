"""Score long-form transcription on a set built by bench/longform_set.py: WER, cue times, speed.

For each recording of the set, the model transcribes the whole file (transcribe_audio.py's code) in
each mode asked for:

* ``cut``: today's path (pieces of at most 30 s cut at the quietest moments, one cue per piece);
* ``timestamps``: ``--timestamps True`` (sequential decoding on predicted timestamps, one cue per segment);
* ``vad``: ``--timestamps True --vad True`` (Silero VAD removes non-speech first).

WER is over each recording's whole text (Whisper's English normaliser), summed over the set. A
sentence's cue is right when the predicted cue that overlaps it most starts and ends within
``--tolerance`` seconds of the sentence's true start and end (the set's ``segments`` file); a cue
holding two sentences fails both. RTFx = seconds of audio / seconds of wall time spent in VAD and
decoding (loading the model, once per file, is not timed).

example:
  python3 bench/longform_eval.py --model /tmp/lf/ts --data /tmp/lf/eval --modes cut timestamps vad
"""
import json
import os
import statistics
import sys
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli, scoring  # noqa: E402
from whisper_finetune.decode import transcription
from whisper_finetune.decode.config import TranscribeConfig
from whisper_finetune.errors import UserError  # noqa: E402
from whisper_finetune.text import choose_normalizer  # noqa: E402

MODES = {"cut": {"timestamps": False, "vad": False}, "timestamps": {"timestamps": True, "vad": False},
         "vad": {"timestamps": True, "vad": True}}


def read_set(folder):
    """``{recording_id: (path, [(start, end, text), ...])}`` from a long-form set's Kaldi files."""
    def table(name):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return [line.split(maxsplit=1) for line in f if line.strip()]

    texts = dict(table("text"))
    recordings = {rid: (os.path.join(folder, path.strip()), []) for rid, path in table("wav.scp")}
    for uid, rest in table("segments"):
        rid, start, end = rest.split()
        recordings[rid][1].append((float(start), float(end), texts[uid].strip()))
    for _, sentences in recordings.values():
        sentences.sort()
    return recordings


def cue_errors(truth, cues):
    """For each true sentence ``(start, end, text)``: ``(start error, end error)`` in seconds against the
    predicted cue ``(start, end)`` that overlaps it most, or ``None`` when no cue overlaps it."""
    errors = []
    for start, end, _ in truth:
        overlaps = [(min(end, c_end) - max(start, c_start), c_start, c_end) for c_start, c_end in cues]
        best = max(overlaps, default=None)
        errors.append(None if best is None or best[0] <= 0 else (abs(best[1] - start), abs(best[2] - end)))
    return errors


def evaluate(model, data, modes, tolerance=0.5, language=None):
    recordings = read_set(data)
    rows = []
    for mode in modes:
        base = TranscribeConfig(hf_model=model, path_to_audio=next(iter(recordings.values()))[0],
                                              language=language, **MODES[mode])
        refs, hyps, errors, cue_lengths, audio_seconds, wall = [], [], [], [], 0.0, 0.0
        for rid, (path, truth) in recordings.items():
            transcript = transcription.transcribe(replace(base, path_to_audio=path))
            wall += transcript.decode_seconds  # VAD and decoding, not the model's loading
            audio_seconds += transcript.duration
            refs.append(" ".join(text for _, _, text in truth))
            hyps.append(transcript.text)
            errors.extend(cue_errors(truth, [(s.start, s.end) for s in transcript.segments]))
            cue_lengths.extend(s.end - s.start for s in transcript.segments)
        normalizer = choose_normalizer("en", english_only_model=True)
        scores = scoring.score(refs, hyps, normalizer)
        within = [e is not None and e[0] <= tolerance and e[1] <= tolerance for e in errors]
        found = [e for e in errors if e is not None]
        rows.append({"mode": mode, "segmentation": transcript.metadata.get("segmentation"),
                     "recordings": len(recordings), "sentences": len(errors), "wer": round(scores["wer"], 4),
                     "cues": len(cue_lengths), "longest_cue_s": round(max(cue_lengths, default=0.0), 2),
                     "cues_within_tolerance": round(sum(within) / len(within), 4),
                     "median_start_error_s": round(statistics.median(e[0] for e in found), 3) if found else None,
                     "median_end_error_s": round(statistics.median(e[1] for e in found), 3) if found else None,
                     "rtfx": round(audio_seconds / wall, 2)})
    return rows


def main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="model folder or Hub id")
    p.add_argument("--data", required=True, help="a folder written by bench/longform_set.py")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="what to run")
    p.add_argument("--tolerance", type=float, default=0.5, help="seconds a cue's start and end may be off")
    p.add_argument("--language", default=None, help="language of the speech (multilingual models)")
    p.add_argument("--output", default=None, help="also write the rows as JSON here")
    args = p.parse_args(argv)
    cli.setup_logging()
    if not os.path.isfile(os.path.join(args.data, "segments")):
        raise UserError(f"--data {args.data}: no segments file (make the set with bench/longform_set.py)")
    rows = evaluate(args.model, args.data, args.modes, args.tolerance, args.language)
    print(f"model {args.model}, set {args.data}, cue tolerance {args.tolerance} s")
    print("| mode | path | WER | sentences with cue start and end within tolerance | median start / end error (s) "
          "| cues | longest cue (s) | RTFx |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['mode']} | {r['segmentation']} | {r['wer']:.4f} | {r['cues_within_tolerance']:.3f} "
              f"({r['sentences']}) | {r['median_start_error_s']} / {r['median_end_error_s']} | {r['cues']} "
              f"| {r['longest_cue_s']} | {r['rtfx']} |")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump({"model": args.model, "data": args.data, "tolerance": args.tolerance, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    cli.run(main)

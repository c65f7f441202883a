"""Turn a corpus folder into a dataset for training and evaluation: a Kaldi-style folder (`text` +
`audio_paths`, or `wav.scp` + `segments`), a Common Voice release, a Hugging Face audiofolder, or NeMo or
Lhotse manifests (--format; detected from the folder's files when not given).

Reads SRC/text (`<id> <transcription>`) and SRC/audio_paths (`<id> <path>`, absolute or relative
to SRC), checks every entry, decodes the audio (wav/flac/ogg/mp3, any rate, stereo down-mixed),
resamples it and writes a dataset that `datasets.load_from_disk(OUT)` opens, with columns
`audio` (bytes stored inside the dataset), `sentence`, `id` and `duration` (seconds). An optional
SRC/utt2spk (`<id> <speaker>`, Kaldi's file) adds a `speaker` column (the evaluation report shows WER
per speaker); with it, every utterance needs a speaker.

A Kaldi data directory works too: SRC/wav.scp (`<recording-id> <path>`; plain files only, no piped
commands) and SRC/segments (`<id> <recording-id> <start> <end>`, seconds) in place of audio_paths.
Each segment is cut from its recording and gets columns `recording_id`, `start` and `end`.

Problems (id in one file only, duplicated id, ids in a different order, empty transcription,
missing/unreadable audio, clip over 30 s; for segments also an unknown recording, end not after
start, end past the recording) are each reported with the id and line number; the run stops with
exit status 2 and writes nothing, unless --skip_invalid drops them. Overlapping segments are kept,
with a warning. OUT appears only when complete (never half-written).

Other formats get the same checks and give the same dataset (the README maps their fields to columns):
  common_voice  SRC/<split>.tsv (--split train dev ...) and SRC/clips/: path, sentence, client_id, locale
  audiofolder   SRC/metadata.csv or SRC/metadata.jsonl: file_name, the text (--text_column), speaker_id, language
  nemo          JSON-lines manifests (--manifest): audio_filepath, text, duration, optional offset and lang
  lhotse        a CutSet manifest, or a RecordingSet and a SupervisionSet manifest (--manifest), read by lhotse
The format is logged, printed in the summary and recorded in OUT/data_prep.json (model cards and
evaluation results name it).

examples:
  python3 custom_data/data_prep.py --source_data_dir sample_data --output_data_dir data/sample
  python3 custom_data/data_prep.py --source_data_dir cv-corpus-20.0/hi --split train dev --output_data_dir data/cv_hi
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli, options  # noqa: E402
from whisper_finetune.data.config import DataPrepConfig, check_values  # noqa: E402


def main(argv=None):
    config, script = options.parse(DataPrepConfig, __doc__, argv)
    check_values(config)  # before any import of the libraries: a bad value is refused at once
    cli.setup_logging(script.verbose)
    from whisper_finetune.data.corpus import prepare_dataset  # after parsing: -h and option errors need no datasets

    print(prepare_dataset(config))
    return 0


if __name__ == "__main__":
    cli.run(main)

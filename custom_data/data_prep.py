"""Turn a Kaldi-style folder (`text` + `audio_paths`) into a dataset for training and evaluation.

Reads SRC/text (`<id> <transcription>`) and SRC/audio_paths (`<id> <path>`, absolute or relative
to SRC), checks every entry, decodes the audio (wav/flac/ogg/mp3, any rate, stereo down-mixed),
resamples it and writes a dataset that `datasets.load_from_disk(OUT)` opens, with columns
`audio` (bytes stored inside the dataset), `sentence`, `id` and `duration` (seconds).

Problems (id in one file only, duplicated id, ids in a different order, empty transcription,
missing/unreadable audio, clip over 30 s) are each reported with the id and line number; the run
stops with exit status 2 and writes nothing, unless --skip_invalid drops them. OUT appears only
when complete (never half-written).

example:
  python3 custom_data/data_prep.py --source_data_dir sample_data --output_data_dir data/sample
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402
from whisper_finetune.data import DataPrepConfig, prepare_dataset  # noqa: E402


def main(argv=None):
    parser = cli.parser(__doc__.split("\n\n")[0], "\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--source_data_dir", required=True, help="folder holding the `text` and `audio_paths` files")
    parser.add_argument("--output_data_dir", required=True, help="folder to write the dataset to (must not exist "
                        "unless --overwrite)")
    parser.add_argument("--sampling_rate", type=int, default=16000, help="resample all audio to this rate (Hz)")
    parser.add_argument("--num_proc", type=int, default=1, help="processes decoding audio in parallel")
    parser.add_argument("--skip_invalid", action="store_true", help="drop invalid utterances (and list them) "
                        "instead of stopping")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output_data_dir")
    parser.add_argument("--num_shards", type=int, default=None, help="write the dataset in this many Arrow shards "
                        "(large corpora; training reads them memory-mapped)")
    parser.add_argument("--max_shard_size", default=None, help="or: maximum size of one shard, e.g. 500MB")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    config = DataPrepConfig(source_data_dir=args.source_data_dir, output_data_dir=args.output_data_dir,
                            sampling_rate=args.sampling_rate, num_proc=args.num_proc, skip_invalid=args.skip_invalid,
                            overwrite=args.overwrite, num_shards=args.num_shards, max_shard_size=args.max_shard_size)
    summary = prepare_dataset(config)
    print(summary)
    return 0


if __name__ == "__main__":
    cli.run(main)

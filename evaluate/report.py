"""Build one evaluation report page (a self-contained HTML file) from existing result folders or files.

Every evaluation run already writes report.html beside its result files; this script builds one from
several runs, e.g. a stock and a fine-tuned model scored on the same datasets: results on one dataset
are shown side by side, and every model after the first is compared with the first (utterances that
got better and worse, WER difference per clip-duration bucket and per speaker).

The page holds everything inline (no CDN, no server): open it from disk in any browser. Audio comes
from the dataset folder each result names (a data_prep folder), embedded as Ogg Vorbis until
--max_embedded_audio_mb is spent; later clips are linked to their source file, or to a compressed
copy written beside the page in <page name>_audio/.

examples:
  python3 evaluate/report.py predictions_stock predictions_finetuned --output report.html
  python3 evaluate/report.py predictions_dir/whisper-tiny.en__eval.json --output eval.html --max_embedded_audio_mb 0
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli  # noqa: E402


def main(argv=None):
    from whisper_finetune.report import DEFAULT_MAX_EMBEDDED_AUDIO_MB, find_result_files, write_report

    parser = cli.parser(__doc__.split("\n\n")[0], "\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("results", nargs="+", metavar="RESULT_DIR_OR_JSON",
                        help="evaluator output folders (every <model>__<dataset>.json with its .txt in them) or "
                             "single result .json files; the first one given is the baseline of comparisons")
    parser.add_argument("--output", required=True, help="the HTML page to write (replaced if it exists)")
    parser.add_argument("--max_embedded_audio_mb", type=float, default=DEFAULT_MAX_EMBEDDED_AUDIO_MB,
                        help="megabytes of audio embedded in the page; clips beyond it are linked instead "
                             "(0: link every clip)")
    parser.add_argument("--title", default="Whisper evaluation report", help="the page's title")
    parser.add_argument("--verbose", type=cli.str2bool, nargs="?", const=True, default=False, metavar="True|False",
                        help="show library warnings and debug logging")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    summary = write_report(find_result_files(args.results), args.output, args.max_embedded_audio_mb, args.title)
    print(f"wrote {summary.path}: {summary.bytes / 1e6:.1f} MB, {summary.datasets} dataset(s), "
          f"{summary.models} result file(s), {summary.utterances} utterances, {summary.embedded_audio} clips "
          f"embedded, {summary.linked_audio} linked")
    return 0


if __name__ == "__main__":
    cli.run(main)

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
from whisper_finetune import cli, options  # noqa: E402
from whisper_finetune.evaluate.config import ReportConfig, check_report_values  # noqa: E402


def main(argv=None):
    config, script = options.parse(ReportConfig, __doc__, argv)
    check_report_values(config)  # before any import of the libraries: a bad value is refused at once
    cli.setup_logging(script.verbose)
    from whisper_finetune.evaluate.report import find_result_files, write_report  # after parsing: -h needs no jiwer

    summary = write_report(find_result_files(config.results), config.output, config.max_embedded_audio_mb,
                           config.title)
    print(f"wrote {summary.path}: {summary.bytes / 1e6:.1f} MB, {summary.datasets} dataset(s), "
          f"{summary.models} result file(s), {summary.utterances} utterances, {summary.embedded_audio} clips "
          f"embedded, {summary.linked_audio} linked")
    return 0


if __name__ == "__main__":
    cli.run(main)

"""Try models by ear: a local web page where you upload or record audio and read each model's transcript.

Serves a Gradio page on http://127.0.0.1 (this machine only; the address is logged when it starts).
With --compare_model the two models transcribe every clip side by side, with decoding time, RTFx and
segments (start/end seconds). Models are local folders or Hub ids; with local folders it works
offline. --share (a public gradio.live link) is never on unless you pass it.

examples:
  python3 demo.py --hf_model openai/whisper-tiny.en
  python3 demo.py --hf_model ../shared/models/whisper-tiny.en --compare_model op_dir_sample --language en
  python3 demo.py --hf_model openai/whisper-base --language hi --num_beams 5 --server_port 7861
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whisper_finetune import cli, options  # noqa: E402
from whisper_finetune.decode.config import DemoConfig, check_demo_values  # noqa: E402


def main(argv=None):
    config, script = options.parse(DemoConfig, __doc__, argv)
    check_demo_values(config)  # before any import of the libraries: a bad value is refused at once
    cli.setup_logging(script.verbose)
    from whisper_finetune.demo import serve  # after parsing: -h and option errors need no torch

    serve(config)
    return 0


if __name__ == "__main__":
    cli.run(main)

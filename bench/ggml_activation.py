"""Where whisper.cpp's transcripts part from PyTorch's: decode one set three ways, greedily.

* PyTorch as Whisper is defined (exact, erf GELU in every MLP): the parity check's reference;
* PyTorch with the tanh approximation of GELU that ggml computes (``activation_function`` set to
  transformers' ``gelu_pytorch_tanh`` when the model is loaded; nothing else changes);
* whisper.cpp on the ggml file, through the parity check's own runtime (``suppress_nst``, flash
  attention off).

Prints each one's WER and which clips differ from the others. On stock whisper-tiny.en and espeak_en/eval
the tanh row writes whisper.cpp's 80 transcripts word for word: the ggml parity gap is the runtime's
activation, not the file (docs/studies/export-parity.md).

example:
  python3 export_model.py --model <whisper-tiny.en> --format ggml --output_dir exp
  python3 bench/ggml_activation.py --model <whisper-tiny.en> --ggml exp/ggml-model-f16.bin --data data/espeak_en_eval
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from whisper_finetune import cli, scoring  # noqa: E402
from whisper_finetune.audio import SAMPLE_RATE, decode_example_audio  # noqa: E402
from whisper_finetune.data.loading import load_custom_dataset  # noqa: E402
from whisper_finetune.data.schema import AUDIO_COLUMN, TEXT_COLUMN  # noqa: E402
from whisper_finetune.errors import UserError  # noqa: E402
from whisper_finetune.export.runtimes import WhisperCppRuntime  # noqa: E402
from whisper_finetune.model import loading  # noqa: E402
from whisper_finetune.text import choose_normalizer  # noqa: E402

MAX_NEW_TOKENS = 128  # the parity check's default (export_model.py --max_new_tokens)


def pytorch_greedy(model_dir, audios, activation=None, batch_size=16):
    """Greedy transcripts of English-only ``model_dir``; ``activation``: its MLPs' activation in place of
    the config's (a transformers ACT2FN name)."""
    from transformers import WhisperForConditionalGeneration

    overrides = {"activation_function": activation} if activation else {}
    model = WhisperForConditionalGeneration.from_pretrained(model_dir, **overrides).eval()
    processor = loading.load_processor(model_dir)
    texts = []
    with torch.inference_mode():
        for start in range(0, len(audios), batch_size):
            features = processor.feature_extractor(audios[start:start + batch_size], sampling_rate=SAMPLE_RATE,
                                                   return_tensors="pt").input_features  # (B, n_mels, 3000)
            tokens = model.generate(features, max_new_tokens=MAX_NEW_TOKENS, num_beams=1)
            texts += [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]
    return texts


def differing(a, b):
    return [i for i, (x, y) in enumerate(zip(a, b)) if x.split() != y.split()]


def main(argv=None):
    p = cli.parser(__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="English-only model folder the ggml file was exported from")
    p.add_argument("--ggml", required=True, help="its ggml file (export_model.py --format ggml)")
    p.add_argument("--data", required=True, help="a data_prep folder of English speech")
    args = p.parse_args(argv)
    cli.setup_logging()
    for flag, path in (("--model", args.model), ("--ggml", args.ggml), ("--data", args.data)):
        if not os.path.exists(path):
            raise UserError(f"{flag} {path}: no such file or folder")
    dataset = load_custom_dataset(args.data)
    audios = [decode_example_audio(v) for v in dataset[AUDIO_COLUMN]]
    refs = list(dataset[TEXT_COLUMN])
    runs = {"pytorch, exact GELU (reference)": pytorch_greedy(args.model, audios),
            "pytorch, tanh GELU (ggml's)": pytorch_greedy(args.model, audios, "gelu_pytorch_tanh"),
            "whisper.cpp": WhisperCppRuntime(args.ggml, "en", True, 1, MAX_NEW_TOKENS).transcribe(audios)}
    normalizer = choose_normalizer("en", english_only_model=True)
    reference, cpp = runs["pytorch, exact GELU (reference)"], runs["whisper.cpp"]
    print(f"{len(audios)} utterances of {args.data}, greedy, {MAX_NEW_TOKENS} tokens at most")
    print("| decoding | WER | clips unlike the reference | clips unlike whisper.cpp |")
    print("| --- | --- | --- | --- |")
    for name, hyps in runs.items():
        wer = scoring.score(refs, hyps, normalizer)["wer"]
        print(f"| {name} | {wer:.4f} | {differing(hyps, reference) or 'none'} | {differing(hyps, cpp) or 'none'} |")
    return 0


if __name__ == "__main__":
    cli.run(main)

"""Extract Whisper hidden states (any encoder/decoder layer) for audio files or a dataset.

Writes OUT/<name>.npz per requested embedding, keyed by utterance id (np.load(f)[id]), and
OUT/manifest.json with the model, every option, the shapes, the pooling and per-item frame counts.

Names: encoder_last_hidden_state, last_hidden_state (decoder), encoder_hidden_states[i],
decoder_hidden_states[i]; a model with L layers has L+1 hidden states per side: index 0 is the
embedding output (input to layer 1), index i the output of layer i, index L (or -1) the last
layer's output after the final layer norm (= *_last_hidden_state). Negative indices count from the end.

--pool mean averages over the encoder frames that cover the real audio (20 ms per frame), not over
the padding of the 30 s window, unless --pool_over_padding True.

examples:
  python3 extract_embeddings.py --model openai/whisper-base --path_to_audio clip.wav --output_dir emb
  python3 extract_embeddings.py --model openai/whisper-base --eval_datasets data/eval --output_dir emb \\
      --embeddings encoder_last_hidden_state "encoder_hidden_states[-2]" last_hidden_state --pool mean
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from whisper_finetune import cli  # noqa: E402
from whisper_finetune.embeddings import DECODER_PROMPTS, POOLING, EmbeddingConfig, extract_embeddings  # noqa: E402


def main(argv=None):
    parser = cli.parser(__doc__.split("\n\n")[0], "\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--model", required=True, help="Hub id, local model folder, checkpoint folder written by our "
                        "trainer (a bare checkpoint-N takes the processor from its parent) or LoRA adapter folder")
    source = parser.add_argument_group("input (exactly one)")
    source.add_argument("--path_to_audio", nargs="+", default=[], help="audio file(s) (wav/flac/ogg/mp3, any rate); "
                        "keyed by file name without extension")
    source.add_argument("--eval_datasets", nargs="+", default=[], help="data_prep output folder(s); keyed by "
                        "utterance id")
    source.add_argument("--dataset", default=None, help="Hugging Face dataset (Hub id or local folder)")
    source.add_argument("--config", default=None, help="configuration of --dataset (e.g. a language)")
    source.add_argument("--split", default="test", help="split of --dataset")
    source.add_argument("--text_column", default=None, help="transcription column of --dataset (found "
                        "automatically when it has a usual name)")
    source.add_argument("--audio_column", default="audio", help="audio column of --dataset")
    parser.add_argument("--embeddings", nargs="+", default=["encoder_last_hidden_state"],
                        help="what to extract, several at once: encoder_last_hidden_state, last_hidden_state, "
                        "encoder_hidden_states[i], decoder_hidden_states[i] (i may be negative; quote the brackets "
                        "in the shell)")
    parser.add_argument("--pool", default="mean", choices=POOLING, help="mean: one vector per utterance, averaged "
                        "over time; none: every frame (encoder) or prompt position (decoder)")
    parser.add_argument("--pool_over_padding", type=cli.str2bool, nargs="?", const=True, default=False,
                        help="use all 1500 encoder frames of the 30 s window (padding included) instead of only the "
                        "frames covering the audio, for --pool mean and --pool none alike")
    parser.add_argument("--split_long", type=cli.str2bool, nargs="?", const=True, default=False,
                        help="embed every 30 s window of longer audio (keys <id>#0, <id>#1, ...) instead of only "
                        "the first 30 s")
    parser.add_argument("--decoder_prompt", default="start", choices=DECODER_PROMPTS,
                        help="decoder input: start = the decoder start token <|startoftranscript|> only; forced = "
                        "<|startoftranscript|><|lang|><|task|><|notimestamps|> (needs --language on multilingual "
                        "models)")
    parser.add_argument("--language", default=None, help="language of the forced prompt, name or code (hi, Hindi)")
    parser.add_argument("--task", default="transcribe", choices=("transcribe", "translate"),
                        help="task token of the forced prompt")
    parser.add_argument("--batch_size", type=int, default=16, help="clips per forward pass")
    parser.add_argument("--device", type=int, default=-1, help="-1 for CPU, N for GPU N")
    parser.add_argument("--output_dir", required=True, help="folder for the .npz files and manifest.json")
    parser.add_argument("--overwrite", type=cli.str2bool, nargs="?", const=True, default=False,
                        help="replace embeddings already in --output_dir")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    config = EmbeddingConfig(
        model=args.model, output_dir=args.output_dir, audio_paths=tuple(args.path_to_audio),
        eval_datasets=tuple(args.eval_datasets), dataset=args.dataset, dataset_config=args.config, split=args.split,
        text_column=args.text_column, audio_column=args.audio_column, embeddings=tuple(args.embeddings),
        pool=args.pool, pool_over_padding=args.pool_over_padding, split_long=args.split_long,
        decoder_prompt=args.decoder_prompt, language=args.language, task=args.task, batch_size=args.batch_size,
        device=args.device, overwrite=args.overwrite)
    print(extract_embeddings(config))
    return 0


if __name__ == "__main__":
    cli.run(main)

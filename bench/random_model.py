"""Write a random-weight Whisper with the shape of a bigger checkpoint, for throughput benchmarks.

Only tiny.en and base weights can be built offline; GPU throughput is dominated by the shape of the
model, not by its weights, so a large-v3-shaped model with random weights measures what a real
large-v3 would cost per step (training) and per decoded token. Its tokenizer, generation config and
special tokens are copied from --like (a real checkpoint), the log-mel front end gets the shape's
number of mel bins. Decoded text is meaningless: random weights rarely emit the end token, so every
clip runs to the token limit, which makes a fixed amount of decoding work per clip.

example (on a GPU the weights are initialised there; about 6 GB of float32 safetensors):
  python3 bench/random_model.py --like ../shared/models/whisper-tiny.en --shape large-v3 --out /tmp/large-v3-random
"""
import argparse
import os
import shutil

# The dimensions of OpenAI's checkpoints (their config.json on the Hub); vocabulary and special tokens
# come from --like instead, so the count of parameters differs by at most a few embedding rows.
SHAPES = {
    "small": dict(d_model=768, layers=12, heads=12, ffn=3072, mels=80),
    "medium": dict(d_model=1024, layers=24, heads=16, ffn=4096, mels=80),
    "large-v3": dict(d_model=1280, layers=32, heads=20, ffn=5120, mels=128),
}
COPIED = ("added_tokens.json", "generation_config.json", "merges.txt", "normalizer.json", "special_tokens_map.json",
          "tokenizer.json", "tokenizer_config.json", "vocab.json")


def build(like, shape, out, seed=0):
    """Write the random model to ``out`` (config, weights, processor files of ``like``); returns
    ``(out, number of parameters)``."""
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    dims = SHAPES[shape]
    config = WhisperConfig.from_pretrained(like)
    config.update(dict(d_model=dims["d_model"], encoder_layers=dims["layers"], decoder_layers=dims["layers"],
                       encoder_attention_heads=dims["heads"], decoder_attention_heads=dims["heads"],
                       encoder_ffn_dim=dims["ffn"], decoder_ffn_dim=dims["ffn"], num_mel_bins=dims["mels"],
                       num_hidden_layers=dims["layers"]))
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising 1.5 B parameters takes minutes on a CPU, seconds on a GPU
        model = WhisperForConditionalGeneration(config)
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out)
    for name in COPIED:
        if os.path.exists(os.path.join(like, name)):
            shutil.copy(os.path.join(like, name), out)
    WhisperFeatureExtractor(feature_size=dims["mels"]).save_pretrained(out)
    return out, sum(p.numel() for p in model.parameters())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--like", required=True, help="real checkpoint folder whose tokenizer and generation config "
                        "are copied")
    parser.add_argument("--shape", default="large-v3", choices=sorted(SHAPES), help="dimensions to use")
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights")
    args = parser.parse_args()
    out, count = build(args.like, args.shape, args.out, args.seed)
    print(f"wrote {out}: random {args.shape}-shaped Whisper, {count / 1e9:.2f} B parameters")


if __name__ == "__main__":
    main()

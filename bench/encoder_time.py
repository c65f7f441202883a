"""Time the log-mel features and the encoder alone: the floor under any Whisper evaluator's wall time.

Whisper's encoder always sees 30 s of (padded) log-mel frames, so its cost per clip does not depend on
the clip's length. Running only the feature extractor and the encoder, in batches, over a dataset
gives the time that no decoding strategy can remove (at that precision, on that machine). Compare
it with bench/eval_speed.py's wall_s of the same data.

example:
  python3 bench/encoder_time.py --model ../shared/models/whisper-tiny.en --data data/espeak_en_eval
"""
import argparse
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="transformers-format Whisper checkpoint folder")
    parser.add_argument("--data", required=True, help="data_prep output folder")
    parser.add_argument("--batch_size", type=int, default=16, help="encoder batch size")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="encoder precision")
    args = parser.parse_args()

    import torch
    from eval_speed import decoded_audio, load_clips  # the same clips and audio decoding as eval_speed
    from transformers import WhisperProcessor

    from whisper_finetune.model import loading
    from whisper_finetune.audio import SAMPLE_RATE

    dataset, _ = load_clips(args.data, None)
    processor = WhisperProcessor.from_pretrained(args.model)
    model = loading.load_model(args.model, torch.device("cpu"), dtype=getattr(torch, args.dtype)).eval()
    audio = decoded_audio(dataset)
    start = time.perf_counter()
    features = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features
    features_s = time.perf_counter() - start
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(features), args.batch_size):
            batch = torch.from_numpy(features[i:i + args.batch_size]).to(model.dtype)  # (B, n_mels, 3000)
            model.model.encoder(batch)
    encoder_s = time.perf_counter() - start
    print(f"{len(features)} clips, {torch.get_num_threads()} threads, {args.dtype}, batch {args.batch_size}: "
          f"log-mel features {features_s:.2f} s, encoder {encoder_s:.2f} s, together {features_s + encoder_s:.2f} s")


if __name__ == "__main__":
    main()

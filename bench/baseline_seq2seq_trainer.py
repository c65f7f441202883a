"""Baseline for bench/train_speed.py: a plain Seq2SeqTrainer set up like transformers' speech-recognition example.

Self-contained on purpose (only transformers, datasets, torch; nothing from whisper_finetune), following
examples/pytorch/speech-recognition/run_speech_recognition_seq2seq.py: the audio column cast to
``Audio(sampling_rate=16000)``, features precomputed with ``Dataset.map`` (one clip per call, stored as
float32 lists), the example's ``DataCollatorSpeechSeq2SeqWithPadding``, AdamW with linear warm-up and
decay, no evaluation, no checkpoints, fp32, ``dataloader_num_workers=0``, random batches (``train_sampling_strategy="random"``).
Writes the Trainer's metrics (train_runtime, train_loss), the last logged loss and the featurisation
time to --result_json.

example:
  python3 bench/baseline_seq2seq_trainer.py --model ../shared/models/whisper-tiny.en --data data/espeak_en_train \\
      --output_dir /tmp/baseline --result_json /tmp/baseline.json
"""
import argparse
import io
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import datasets
import soundfile
import torch
from transformers import (AutoModelForSpeechSeq2Seq, AutoProcessor, Seq2SeqTrainer, Seq2SeqTrainingArguments,
                          set_seed)


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    """The collator of transformers' run_speech_recognition_seq2seq.py (features padded by the feature
    extractor, labels padded by the tokenizer and masked with -100, a leading start token stripped)."""

    processor: Any
    decoder_start_token_id: int

    def __call__(self, features):
        model_input_name = self.processor.model_input_names[0]
        input_features = [{model_input_name: feature[model_input_name]} for feature in features]
        label_features = [{"input_ids": feature["labels"]} for feature in features]
        batch = self.processor.feature_extractor.pad(input_features, return_tensors="pt")  # (B, n_mels, 3000)
        labels_batch = self.processor.tokenizer.pad(label_features, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)  # (B, tokens)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Whisper checkpoint folder")
    parser.add_argument("--data", required=True, help="data_prep output folder (columns audio, sentence)")
    parser.add_argument("--output_dir", required=True, help="Trainer output folder (nothing is saved in it)")
    parser.add_argument("--result_json", required=True, help="where to write the metrics")
    parser.add_argument("--language", default=None, help="language for multilingual models (e.g. hindi)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps (max_steps)")
    parser.add_argument("--batch_size", type=int, default=8, help="per_device_train_batch_size")
    parser.add_argument("--learning_rate", type=float, default=1e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=10, help="linear warm-up steps, then linear decay")
    parser.add_argument("--logging_steps", type=int, default=10, help="log the training loss every N steps")
    parser.add_argument("--seed", type=int, default=42, help="random seed")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="fp32, or the Trainer's --bf16/--fp16 mixed precision (fp16: GPU only)")
    args = parser.parse_args()
    set_seed(args.seed)

    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForSpeechSeq2Seq.from_pretrained(args.model)
    if args.language is not None:
        processor.tokenizer.set_prefix_tokens(language=args.language, task="transcribe")
        model.generation_config.language = args.language
        model.generation_config.task = "transcribe"
    model.generation_config.forced_decoder_ids = None
    model.config.forced_decoder_ids = None

    raw = datasets.load_from_disk(args.data)
    # The example casts to Audio(sampling_rate=16000) and reads sample["array"]; datasets >= 4 decodes that
    # through torchcodec and FFmpeg, which this machine lacks, so the clips (16 kHz WAV bytes written by
    # data_prep) are decoded with soundfile, the library datasets 3 used for the same files.
    raw = raw.cast_column("audio", datasets.Audio(decode=False))
    model_input_name = processor.feature_extractor.model_input_names[0]

    def prepare_dataset(batch):
        array, rate = soundfile.read(io.BytesIO(batch["audio"]["bytes"]), dtype="float32")
        inputs = processor.feature_extractor(array, sampling_rate=rate)
        batch[model_input_name] = inputs.get(model_input_name)[0]
        batch["input_length"] = len(array)
        batch["labels"] = processor.tokenizer(batch["sentence"]).input_ids
        return batch

    start = time.perf_counter()
    vectorized = raw.map(prepare_dataset, remove_columns=raw.column_names, desc="preprocess train dataset")
    featurize_seconds = time.perf_counter() - start

    training_args = Seq2SeqTrainingArguments(
        output_dir=args.output_dir, per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_steps=args.warmup, max_steps=args.steps, lr_scheduler_type="linear", optim="adamw_torch",
        weight_decay=0.0, max_grad_norm=1.0, eval_strategy="no", save_strategy="no", logging_steps=args.logging_steps,
        report_to=[], seed=args.seed, dataloader_num_workers=0, train_sampling_strategy="random",
        fp16=args.precision == "fp16", bf16=args.precision == "bf16",
        use_cpu=args.precision == "bf16" and not torch.cuda.is_available(),  # the Trainer's rule for bf16 on a CPU
        predict_with_generate=False, disable_tqdm=True)
    trainer = Seq2SeqTrainer(model=model, args=training_args, train_dataset=vectorized,
                             processing_class=processor.feature_extractor,
                             data_collator=DataCollatorSpeechSeq2SeqWithPadding(
                                 processor, model.config.decoder_start_token_id))
    result = trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    with open(args.result_json, "w", encoding="utf-8") as f:
        json.dump({"train_runtime": result.metrics["train_runtime"], "train_loss": result.training_loss,
                   "final_logged_loss": losses[-1] if losses else None, "global_step": trainer.state.global_step,
                   "featurize_seconds": featurize_seconds, "train_samples": len(vectorized),
                   "torch_threads": torch.get_num_threads(),
                   "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None,
                   "metrics": result.metrics}, f, indent=2)


if __name__ == "__main__":
    main()

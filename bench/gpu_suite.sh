#!/usr/bin/env bash
# The benchmarks on GPU 0, in one go (what bench/RESULTS.md's GPU section was measured with).
#   bash bench/gpu_suite.sh MODEL EVAL_DATA TRAIN_DATA OUT_DIR
# MODEL: a real checkpoint folder (whisper-tiny.en); EVAL_DATA/TRAIN_DATA: data_prep folders.
# 1. evaluation speed and WER of the real model, every PyTorch precision, the pipeline and JAX;
# 2. fine-tuning speed of the real model, bf16 mixed precision, ours against the plain Seq2SeqTrainer;
# 3-4. the same on a random-weight model of large-v3's shape (bench/random_model.py): throughput only,
#      every clip decodes to the token limit (random weights rarely emit the end token).
set -u
MODEL=$1 EVAL=$2 TRAIN=$3 OUT=$4
LARGE=${LARGE_MODEL_DIR:-/tmp/large-v3-random}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 bench/eval_speed.py --model "$MODEL" --data "$EVAL" --device 0 --out "$OUT/eval_tiny.json" \
    --rows pipeline pipeline_batched pipeline_batched_fp16 pytorch pytorch_bf16 pytorch_fp16 jax
python3 bench/train_speed.py --model "$MODEL" --data "$TRAIN" --eval_data "$EVAL" --steps 100 --batch_size 32 \
    --learning_rate 1e-4 --warmup 10 --precision bf16 --out "$OUT/train_tiny.json"
python3 bench/random_model.py --like "$MODEL" --shape large-v3 --out "$LARGE"
python3 bench/eval_speed.py --model "$LARGE" --data "$EVAL" --device 0 --max_samples 32 --max_new_tokens 64 \
    --rows pipeline pipeline_batched_fp16 pytorch pytorch_bf16 pytorch_fp16 --out "$OUT/eval_large.json"
python3 bench/train_speed.py --model "$LARGE" --data "$TRAIN" --eval_data "$EVAL" --steps 20 --batch_size 16 \
    --learning_rate 1e-5 --warmup 2 --eval_samples 2 --eval_max_new_tokens 4 --precision bf16 \
    --out "$OUT/train_large.json"

"""Flags of the two training scripts (shim side: only ``train/*.py`` import this module).

Both scripts take the same flags except where the data comes from: the HF script adds per-dataset
config, split and text-column lists. Every flag fills the :class:`TrainConfig` field of its name.
"""
import dataclasses

from . import cli
from .training import PRECISIONS, STRATEGIES, TrainConfig, format_summary, train


def build_parser(description, epilog, hf):
    """The argument parser of ``fine-tune_on_hf_dataset.py`` (``hf=True``) or the custom-data script."""
    p = cli.parser(description, epilog)
    add = p.add_argument
    add("--model_name", required=True, help="Whisper model to fine-tune: a Hub id or a local folder")
    add("--language", default=None, help="language of the speech, a name (Hindi) or code (hi); written into the "
        "saved generation config. English-only (.en) models take none (or English)")
    add("--task", default="transcribe", choices=("transcribe", "translate"), help="task token for multilingual models")
    what = "Hub ids or local dataset folders" if hf else "data_prep output folders"
    add("--train_datasets", nargs="+", required=True, help=f"training datasets ({what}); concatenated and shuffled")
    add("--eval_datasets", nargs="+", required=True, help=f"evaluation datasets ({what}); concatenated")
    if hf:
        for role in ("train", "eval"):
            add(f"--{role}_dataset_configs", nargs="+", default=None,
                help=f"one config per --{role}_datasets entry (e.g. hi); omit when the datasets have none")
            add(f"--{role}_dataset_splits", nargs="+", default=None,
                help=f"one split per --{role}_datasets entry (default: {'train' if role == 'train' else 'test'})")
            add(f"--{role}_dataset_text_columns", nargs="+", default=None,
                help=f"one transcription column per --{role}_datasets entry (default: sentence, text, "
                     f"transcription... whichever exists)")
        add("--audio_column", default="audio", help="name of the audio column in the HF datasets")
        add("--streaming", type=cli.str2bool, default=False, help="read the training datasets as streams "
            "(IterableDataset: never downloaded whole, featurised on the fly); needs --train_strategy steps")
        add("--interleave_probabilities", nargs="+", type=float, default=None, help="with --streaming: one sampling "
            "weight per --train_datasets entry (default: proportional to size when known, else equal)")
        add("--shuffle_buffer_size", type=int, default=1000, help="with --streaming: examples held in the "
            "shuffle buffer")
    add("--output_dir", required=True, help="folder for checkpoints, logs, the plot, the summary and the final model")
    add("--sampling_rate", type=int, default=16000, help="resample all audio to this rate (Hz)")
    add("--num_proc", type=int, default=1, help="processes computing log-mel features (once, before training)")
    add("--train_strategy", default="steps", choices=STRATEGIES, help="train for --num_steps or --num_epochs")
    add("--num_steps", type=int, default=1000, help="optimizer steps with --train_strategy steps")
    add("--num_epochs", type=float, default=1.0, help="epochs with --train_strategy epoch")
    add("--learning_rate", type=float, default=None, help="peak learning rate (default: pre-training maximum / 40 "
        "for the model's size, e.g. tiny 3.75e-5, base 2.5e-5)")
    add("--warmup", type=int, default=0, help="linear warm-up steps, then linear decay to zero")
    add("--lr_scheduler_type", default="linear", help="transformers scheduler name (linear, cosine, constant...)")
    add("--weight_decay", type=float, default=0.0, help="AdamW weight decay")
    add("--max_grad_norm", type=float, default=1.0, help="gradient clipping norm")
    add("--train_batchsize", type=int, default=16, help="training batch size per process")
    add("--eval_batchsize", type=int, default=8, help="evaluation batch size per process")
    add("--gradient_accumulation_steps", type=int, default=1, help="batches accumulated per optimizer step")
    add("--gradient_checkpointing", type=cli.str2bool, default=False, help="recompute activations in the backward "
        "pass (less memory, about 30%% slower)")
    add("--freeze_encoder", type=cli.str2bool, default=False, help="train the decoder only")
    add("--mixed_precision", default="auto", choices=PRECISIONS, help="auto: bf16 on GPUs that support it, else "
        "fp16; fp32 on CPU")
    add("--eval_steps", type=int, default=None, help="evaluate (WER/CER with generation) every N steps with "
        "--train_strategy steps (default: num_steps/5, at most 1000); epoch strategy: every epoch")
    add("--save_steps", type=int, default=None, help="save a checkpoint every N steps (default: --eval_steps; "
        "must be a multiple of it)")
    add("--save_total_limit", type=int, default=None, help="keep at most N checkpoints (the best one is always kept)")
    add("--logging_steps", type=int, default=10, help="log training loss every N steps (TensorBoard, plot)")
    add("--generation_max_new_tokens", type=int, default=128, help="token limit when decoding for evaluation")
    add("--max_train_samples", type=int, default=None, help="use only the first N (shuffled) training utterances")
    add("--max_eval_samples", type=int, default=None, help="use only the first N (shuffled) evaluation utterances")
    add("--seed", type=int, default=42, help="seed for shuffling, initialisation and data order")
    add("--lowercase", type=cli.str2bool, default=False, help="lower-case training and evaluation transcripts")
    add("--remove_punctuation", type=cli.str2bool, default=False, help="remove punctuation from the transcripts")
    add("--lora", type=cli.str2bool, default=False, help="train LoRA adapters (peft) on the attention "
        "q/k/v/out projections instead of all weights")
    add("--lora_r", type=int, default=32, help="LoRA rank")
    add("--lora_alpha", type=int, default=64, help="LoRA alpha (scaling = alpha / r)")
    add("--lora_dropout", type=float, default=0.05, help="dropout on the LoRA path")
    add("--resume_from_ckpt", type=cli.none_or_str, default=None, help="None: start fresh; a checkpoint-N folder: "
        "resume it exactly; latest: the newest checkpoint in --output_dir")
    add("--overwrite_output_dir", type=cli.str2bool, default=False, help="replace an earlier run in --output_dir")
    add("--deepspeed", default=None, help="DeepSpeed config file, passed to the Trainer")
    add("--fsdp", default="", help="FSDP options passed to the Trainer, e.g. 'full_shard auto_wrap'")
    add("--fsdp_config", default=None, help="FSDP config JSON passed to the Trainer (e.g. configs/fsdp_config.json)")
    add("--push_to_hub", type=cli.str2bool, default=False, help="after training, upload the final model, processor, "
        "generation config and model card (README.md) to --hub_model_id (needs a Hugging Face login)")
    add("--hub_model_id", default=None, help="Hub repository for --push_to_hub, e.g. your-name/whisper-small-hi")
    add("--hub_private_repo", type=cli.str2bool, default=False, help="create the Hub repository as private")
    add("--num_workers", type=int, default=0, help="data-loader worker processes")
    add("--report_to", default="tensorboard", help="Trainer logging integration (tensorboard, none...)")
    add("--verbose", action="store_true", help="debug logging")
    return p


def config_from_args(args, custom):
    """Build the frozen :class:`TrainConfig` from parsed flags (lists become tuples)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return TrainConfig(custom=custom, **values)


def main(doc, hf, argv=None):
    """The whole of both training scripts: parse the flags, train, print the summary on rank 0."""
    paragraphs = doc.split("\n\n")
    args = build_parser(paragraphs[0], "\n\n".join(paragraphs[1:]), hf=hf).parse_args(argv)
    cli.setup_logging(args.verbose)
    summary = train(config_from_args(args, custom=not hf))
    if summary["is_main_process"]:
        print(format_summary(summary))
    return 0

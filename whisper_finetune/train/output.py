"""What a run leaves in ``output_dir`` besides its checkpoints: the final model, published file by file, its
per-dataset scores, and the clearing of an earlier run's files (``--overwrite_output_dir``)."""
import dataclasses
import glob
import logging
import os
import shutil

from .. import files
from ..data.bad_audio import BAD_EXAMPLES_FILE
from ..files import publish
from ..model import loading
from .checks import RUN_MARKERS
from .data import prepare_split
from .summary import PLOT_FILE, DatasetScore

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
FINAL_STAGING = ".final-model" + files.PARTIAL_SUFFIX


def clear_earlier_run(output_dir):
    for marker in RUN_MARKERS + ("generation_config.json", PLOT_FILE, "runs", ".feature_cache", ADAPTER_DIR,
                   BAD_EXAMPLES_FILE):
        path = os.path.join(output_dir, marker)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    for path in glob.glob(os.path.join(output_dir, "checkpoint-*")):
        shutil.rmtree(path)


def save_final(trainer, processor, config, generation_config, needed_bytes=None):
    """Best model (already loaded by the Trainer) + processor + generation config into ``output_dir``.

    Written into a staging folder first (every rank takes part in ``save_model``, as FSDP and
    DeepSpeed need), then each file is renamed into ``output_dir``: a kill leaves whole files only.
    A LoRA run also keeps its adapter folder, published as a whole. A full disk while the model is staged
    removes the staging folder and raises :class:`~whisper_finetune.errors.DiskFull` (the checkpoints are
    intact: rerunning with ``--resume_from_ckpt latest`` writes the final model again).
    """
    with files.space_guard(config.output_dir, "the final model", partial=os.path.join(config.output_dir, FINAL_STAGING),
                           needed=needed_bytes, advice="the checkpoints are intact; free some space and rerun the same "
                                                       "command with --resume_from_ckpt latest"):
        _save_final(trainer, processor, config, generation_config)


def _save_final(trainer, processor, config, generation_config):
    out = config.output_dir
    staged = os.path.join(out, FINAL_STAGING)
    main = trainer.is_world_process_zero()
    model = trainer.model
    if main:
        shutil.rmtree(staged, ignore_errors=True)
    if config.lora:
        if main:
            with files.atomic_dir(os.path.join(out, ADAPTER_DIR)) as adapter:
                for part in (model, processor, generation_config):
                    part.save_pretrained(adapter)
            merged = model.merge_and_unload()
            merged.generation_config = generation_config
            merged.save_pretrained(staged)
    else:
        trainer.save_model(staged)
    if main:
        loading.save_processor(processor, staged)
        loading.single_eos(generation_config).save_pretrained(staged)
        for name in sorted(os.listdir(staged), key=lambda n: n.endswith((".safetensors", ".bin"))):
            publish(os.path.join(staged, name), os.path.join(out, name))  # weights last
        os.rmdir(staged)


def evaluate_each(trainer, config, specs, processor, args, retain=None):
    """WER/CER of the final (best) model on each evaluation dataset on its own, for the model card; with
    ``retain`` (its :class:`EvalSet`) on each retain dataset, decoded and scored as the retain sets are."""
    role = "retain" if retain else "eval"
    prefix = f"final_{role}"
    rows = []
    for spec in specs:
        with args.main_process_first(desc="dataset preparation"):
            dataset, _ = prepare_split(config, role, [spec], config.max_eval_samples, processor)
        if retain:
            metrics = trainer.evaluate_set(dataclasses.replace(retain, prefix=prefix, dataset=dataset))
        else:
            metrics = trainer.evaluate(eval_dataset=dataset, metric_key_prefix=prefix)
        rows.append(DatasetScore(spec.label, len(dataset), metrics[f"{prefix}_wer"], metrics[f"{prefix}_cer"]))
        logger.info("final model on %s (%s): WER %.4f, CER %.4f", spec.label, role, rows[-1].wer, rows[-1].cer)
    return rows

"""The model a run trains: loaded with the run's language, frozen parts, LoRA, SpecAugment settings, and the
tokenizers and decoding settings of its labels and retain sets."""
import copy
import logging

from ..model import loading
from . import consolidation, distillation

logger = logging.getLogger(__name__)

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def build_model(config, language):
    model = loading.load_for_training(config.model_name, language, config.task, config.dynamic_audio_context)
    if config.dynamic_audio_context:
        # Recorded in config.json, so the saved (plain Whisper) checkpoint says how it was trained.
        model.config.dynamic_audio_context = {"bucket_seconds": config.audio_context.audio_context_bucket_seconds,
                                              "full_context_ratio": config.full_context_ratio,
                                              "short_context_updates": config.short_context_updates}
    # Recorded in config.json, so transcription knows whether the model still predicts timestamps
    # (False: trained on <|notimestamps|> only, so its timestamps are not to be trusted).
    model.config.timestamp_training = {"ratio": config.timestamp_ratio} if config.timestamps else False
    model.config.use_cache = not config.gradient_checkpointing
    set_spec_augment(model, config)
    if config.freeze_encoder:
        model.freeze_encoder()
    if config.freeze_encoder_layers:
        freeze_lower_encoder(model, config.freeze_encoder_layers)
    if config.freeze_decoder:
        # proj_out shares its weight with the decoder's token embeddings, so it is frozen with them.
        for parameter in model.model.decoder.parameters():
            parameter.requires_grad = False
    if config.lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=list(LORA_TARGETS), bias="none")
        model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("trainable parameters: %d of %d (%.1f%%)", trainable, total, 100 * trainable / total)
    return model


def freeze_lower_encoder(model, layers):
    """Freeze what the encoder computes below its layer ``layers``: the two convolutions, the positional
    embeddings and layers ``0 .. layers-1``. Nothing below the first trained layer needs a gradient, so
    autograd stops there and the backward pass through those layers is never run."""
    encoder = model.model.encoder
    for module in (encoder.conv1, encoder.conv2, encoder.embed_positions, *encoder.layers[:layers]):
        for parameter in module.parameters():
            parameter.requires_grad = False
    logger.info("encoder: convolutions and the first %d of its %d layers frozen", layers, len(encoder.layers))


def make_distiller(config, language, device):
    """With --distill_weight: the frozen base model whose token distributions each training step is held to."""
    if not config.distill_weight:
        return None
    teacher = distillation.load_teacher(config.model_name, language, config.task, config.dynamic_audio_context,
                                         device)
    logger.info("distillation to the base model: weight %g x KL per label token (temperature %g)%s",
                config.distill_weight, distillation.TEMPERATURE,
                ", on the replay rows only" if config.distill_rows == "replay" else "")
    return distillation.Distiller(teacher, config.distill_weight,
                                  share_encoder=config.freeze_encoder and not config.spec_augment,
                                  replay_only=config.distill_rows == "replay")


def make_consolidation(config, model, replay_rows, extractor, device):
    """With --ewc_weight: the base model's Fisher on the replay rows, and the term that holds each step to it.
    Run on ``device`` (the Trainer would move the model there anyway); every process computes the same one."""
    if not config.ewc_weight:
        return None
    model.to(device)
    fisher, estimate = consolidation.fisher_diagonal(model, replay_rows, extractor, device)
    logger.info("elastic weight consolidation: weight %g; Fisher of %d trained weights on %d replay clip(s) "
                "(%d label tokens) in %.0f s", config.ewc_weight, estimate.parameters, estimate.clips,
                estimate.label_tokens, estimate.seconds)
    return consolidation.Consolidation(model, fisher, config.ewc_weight, estimate)


def set_spec_augment(model, config):
    """SpecAugment's settings (--spec_augment, --mask_*) on the model's config, with ``apply_spec_augment``
    False: the trainer turns it on inside training steps only, so evaluation and every saved config.json
    (checkpoints, final model) have it off."""
    if getattr(model.config, "apply_spec_augment", False) and not config.spec_augment:
        logger.info("%s asks for SpecAugment in its config: off without --spec_augment True", config.model_name)
    model.config.apply_spec_augment = False
    if config.spec_augment:
        model.config.update({"mask_time_prob": config.mask_time_prob, "mask_time_length": config.mask_time_length,
                             "mask_feature_prob": config.mask_feature_prob,
                             "mask_feature_length": config.mask_feature_length})
        logger.info("SpecAugment in training steps: time masks of %d frames over %.0f%% of frames, mel-channel "
                    "masks of %d over %.0f%% of channels", config.mask_time_length, 100 * config.mask_time_prob,
                    config.mask_feature_length, 100 * config.mask_feature_prob)


def context_frozen(model, config):
    """The trainable parameters each kind of step of a dynamic-context run leaves alone (LoRA: adapters):
    ``(short-context steps', 30 s steps')``. ``encoder``: the decoder on short steps; ``split``: the
    decoder on short steps and the encoder on 30 s steps; ``all``: none."""
    if not config.dynamic_audio_context:
        return [], []
    decoder, encoder = trained_halves(model, config)
    return {"all": ([], []), "encoder": (decoder, []), "split": (decoder, encoder)}[config.short_context_updates]


def trained_halves(model, config):
    """The trained parameters of the decoder and of the encoder (LoRA: their adapters), as two lists."""
    whisper = model.get_base_model() if config.lora else model
    decoder = [parameter for parameter in whisper.model.decoder.parameters() if parameter.requires_grad]
    encoder = [parameter for parameter in whisper.model.encoder.parameters() if parameter.requires_grad]
    return decoder, encoder


def learning_rate_scales(model, config):
    """The trained parameters that do not train at the whole rate: ``((share of --learning_rate, parameters),
    ...)``, largest share first (LoRA: the adapters, by the layer they adapt).

    In each half the top layer trains at the half's rate (the encoder's: ``--encoder_lr_ratio``), each layer
    below at ``--layer_lr_decay`` times the one above, and what lies below the bottom layer (the encoder's
    convolutions, the decoder's embeddings, tied to its output projection) one step further down; the final
    layer norm sits above the top layer.
    """
    whisper = model.get_base_model() if config.lora else model
    scales = {}
    for half, share in ((whisper.model.decoder, 1.0), (whisper.model.encoder, config.encoder_lr_ratio)):
        layers = len(half.layers)
        below_top = {id(parameter): layers - 1 - index for index, layer in enumerate(half.layers)
                     for parameter in layer.parameters()}
        for name, parameter in half.named_parameters():
            if not parameter.requires_grad:
                continue
            steps = below_top.get(id(parameter), 0 if name.startswith("layer_norm.") else layers)
            scale = share * config.layer_lr_decay ** steps
            if scale != 1:
                scales.setdefault(scale, []).append(parameter)
    return tuple((scale, tuple(scales[scale])) for scale in sorted(scales, reverse=True))


def configure_tokenizer(tokenizer, language, task, english_only):
    """Labels start ``<|startoftranscript|><|lang|><|task|><|notimestamps|>`` (English-only: no lang/task)."""
    if english_only:
        tokenizer.language, tokenizer.task = None, None
        tokenizer.set_prefix_tokens(predict_timestamps=False)
    else:
        tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    return tokenizer


def retain_processor(model_name, language, english_only):
    """A processor whose labels start as the retain sets' own: ``<|startoftranscript|>[<|lang|>]<|transcribe|>
    <|notimestamps|>`` (no language token when it is detected; English-only models: neither token)."""
    processor = loading.load_processor(model_name)
    if english_only:
        configure_tokenizer(processor.tokenizer, None, None, True)
    else:
        processor.tokenizer.language = language  # set_prefix_tokens(language=None) would keep a saved one
        processor.tokenizer.set_prefix_tokens(task="transcribe", predict_timestamps=False)
    return processor


def retain_decode_kwargs(generation_config, language, english_only, config):
    """Generation settings of the retain sets: the trained model's generation config (which says the
    training language) with the retain language in its place, or none, so Whisper detects each clip's."""
    retain_generation = copy.deepcopy(generation_config)
    if not english_only:
        retain_generation.language, retain_generation.task = language, "transcribe"
    return {"generation_config": retain_generation, "max_new_tokens": config.generation_max_new_tokens}

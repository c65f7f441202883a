"""Distillation to the base model (``--distill_weight``): a fine-tune that keeps the base model's answers.

Learning without forgetting (Li & Hoiem, *Learning without Forgetting*, ECCV 2016): beside the cross
entropy against the labels, each training step pays for how far the fine-tune's next-token
distributions have moved from the frozen base model's on the same batch (teacher-forced on the same
labels). Weight interpolation (``--merge_ratio``) can only move every weight back along one straight
line; this term lets the optimizer find weights that learn the new data while answering, token by
token, as the base model did where the labels leave it free (the other tokens' probabilities, and so
the model's language model and acoustic habits).
"""
import torch
import torch.nn.functional as F
from transformers.models.whisper.modeling_whisper import shift_tokens_right

from ..model import loading

# Softening of both distributions before they are compared, and the T^2 that keeps the gradient's
# scale independent of it (Hinton et al., *Distilling the Knowledge in a Neural Network*, 2015). 2 is
# the value Li & Hoiem used; at 1 the term sees little beyond each step's most likely token.
TEMPERATURE = 2.0


def token_kl(student_logits, teacher_logits, mask, temperature=TEMPERATURE):
    """Mean KL(teacher || student) per label token, both softened by ``temperature``, times its square.

    ``student_logits``/``teacher_logits``: (batch, tokens, vocabulary); ``mask``: (batch, tokens), True
    where the position has a label (padding is -100 in the labels). Returns a scalar tensor.
    """
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (batch, tokens, vocab)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_token = F.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)  # (batch, tokens)
    return (per_token * mask).sum() / mask.sum().clamp(min=1) * temperature ** 2


def load_teacher(model_name, language, task, dynamic_audio_context, device):
    """The frozen base model, as the fine-tune starts: same language/task tokens and, with dynamic audio
    context, the same short-context encoder (the training batches are cut the same way for both)."""
    teacher = loading.load_for_training(model_name, language, task, dynamic_audio_context)
    teacher.config.apply_spec_augment = False  # the teacher answers for the clean input
    teacher.requires_grad_(False)
    return teacher.eval().to(device)


class Distiller:
    """The distillation term of one training step: ``weight`` x :func:`token_kl` against ``teacher``.

    ``share_encoder``: the fine-tune's encoder is frozen (``--freeze_encoder``), so its output is the
    teacher's too and the teacher runs its decoder alone on it (the encoder is most of a forward pass).
    ``replay_only``: ``--distill_rows replay``; :meth:`loss` then needs each batch's replay-row flags.
    """

    def __init__(self, teacher, weight, share_encoder=False, replay_only=False):
        self.teacher = teacher
        self.weight = weight
        self.share_encoder = share_encoder
        self.replay_only = replay_only  # --distill_rows replay: every batch must say which rows are replay

    def loss(self, outputs, inputs, rows=None):
        """The weighted term for a batch the student has just run on: ``outputs`` its Seq2SeqLMOutput,
        ``inputs`` the batch as the model took it; ``rows`` (batch,) bool: only these rows pay the term
        (``--distill_rows replay``), and only they go through the teacher. None: every row."""
        labels = inputs["labels"]  # (batch, tokens), -100 where padded
        decoder_input_ids = inputs.get("decoder_input_ids")
        if decoder_input_ids is None:  # as the model makes them from the labels
            decoder_input_ids = shift_tokens_right(labels, self.teacher.config.pad_token_id,
                                                   self.teacher.config.decoder_start_token_id)
        student_logits = outputs.logits  # (batch, tokens, vocab)
        if self.share_encoder:
            source = outputs.encoder_last_hidden_state.detach()  # (batch, frames, d_model)
        else:
            source = inputs["input_features"]  # (batch, n_mels, frames)
        if rows is None and self.replay_only:  # never silently hold the training rows too
            raise RuntimeError("--distill_rows replay: a training batch came without its replay-row flags")
        if rows is not None:
            rows = rows.to(labels.device)
            if not rows.any():  # no replay row in this batch: nothing to hold
                return student_logits.sum() * 0.0
            labels, decoder_input_ids, student_logits, source = (
                labels[rows], decoder_input_ids[rows], student_logits[rows], source[rows])
        source = {"encoder_outputs": (source,)} if self.share_encoder else {"input_features": source}
        with torch.no_grad():
            teacher_logits = self.teacher(**source, decoder_input_ids=decoder_input_ids).logits
        return self.weight * token_kl(student_logits, teacher_logits, labels != -100)

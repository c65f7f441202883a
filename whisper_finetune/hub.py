"""Publishing a fine-tuned model folder on the Hugging Face Hub with ``huggingface_hub``.

:func:`check_push` runs before training (so a missing ``--hub_model_id`` or login fails at once);
:func:`create_repo` and :func:`upload_folder` run after training on rank 0 and upload the final model, processor,
generation config and model card, leaving out checkpoints and caches.
"""
import logging

logger = logging.getLogger(__name__)

# Training by-products that do not belong in the published repository.
IGNORE_PATTERNS = ("checkpoint-*", "checkpoint-*/**", ".feature_cache/**", "training_args.bin", "trainer_state.json")


def check_push(hub_model_id):
    """Raise :class:`UserError` unless a push to ``hub_model_id`` can be attempted (id given, token found)."""
    from huggingface_hub import get_token

    from .errors import OptionError, UserError

    if not hub_model_id:
        raise UserError("--push_to_hub True needs --hub_model_id (e.g. your-name/whisper-small-hi)")
    if len(hub_model_id.split("/")) > 2 or not all(hub_model_id.split("/")):
        raise OptionError("hub_model_id", hub_model_id, "expected NAME or OWNER/NAME")
    if get_token() is None:
        raise UserError("--push_to_hub True: no Hugging Face token found; run `huggingface-cli login` or set HF_TOKEN")


def _api(api):
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    return api


def create_repo(hub_model_id, private=False, api=None):
    """Create (or reuse) the model repository; returns its URL (recorded in the summary before the upload)."""
    return str(_api(api).create_repo(hub_model_id, private=private, repo_type="model", exist_ok=True))


def upload_folder(folder, hub_model_id, api=None):
    """Upload ``folder`` to the repository made by :func:`create_repo`, leaving out checkpoints and caches."""
    _api(api).upload_folder(folder_path=folder, repo_id=hub_model_id, repo_type="model",
                            ignore_patterns=list(IGNORE_PATTERNS), commit_message="Upload fine-tuned Whisper model")
    logger.info("pushed %s to %s", folder, hub_model_id)

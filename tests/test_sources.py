"""Where a model name points, told from the file system alone (whisper_finetune.model.sources): the folders each
script refuses before loading anything, with the message that names the flag."""
import json
import re

import pytest

from whisper_finetune.errors import OptionError
from whisper_finetune.model import sources


def _folder(tmp_path, name, files):
    folder = tmp_path / name
    folder.mkdir()
    for file, content in files.items():
        (folder / file).write_text(content if isinstance(content, str) else json.dumps(content))
    return str(folder)


WHISPER = {"config.json": {"model_type": "whisper"}, "model.safetensors": "", "preprocessor_config.json": "{}",
           "tokenizer_config.json": "{}"}

# (folder's files, the message resolve_model gives for it as --hf_model, or None where it resolves)
FOLDERS = [
    (WHISPER, None),
    ({**WHISPER, "config.json": {"model_type": "bert"}}, "not a Whisper model: its config.json says model_type 'bert', "
     "expected 'whisper'"),
    ({**WHISPER, "config.json": "{not json"}, "its config.json is not a model config"),
    ({**WHISPER, "config.json": "[1, 2]"}, "its config.json is not a model config"),
    ({}, "folder holds no model (no config.json or weights: looked for model.safetensors"),
    ({"config.json": {"model_type": "whisper"}, "model.safetensors": ""}, "no processor files"),
]


@pytest.mark.parametrize("files, message", FOLDERS, ids=["whisper", "bert", "not-json", "json-list", "empty",
                                                          "no-processor"])
def test_resolve_model_tells_folders_apart(tmp_path, files, message):
    folder = _folder(tmp_path, "model", files)
    if message is None:
        assert sources.resolve_model(folder, "hf_model") == sources.ModelSource(folder, folder, "model")
        return
    with pytest.raises(OptionError) as refused:
        sources.resolve_model(folder, "hf_model")
    assert refused.value.render().startswith(f"--hf_model {folder}: {message}")


def test_an_adapter_is_judged_by_its_base_model(tmp_path):
    base = _folder(tmp_path, "base", {**WHISPER, "config.json": {"model_type": "wav2vec2"}})
    adapter = _folder(tmp_path, "adapter", {"adapter_config.json": {"base_model_name_or_path": base},
                                            "adapter_model.safetensors": ""})
    with pytest.raises(OptionError, match="not a Whisper model: its config.json says model_type 'wav2vec2'"):
        sources.resolve_model(adapter, "model")


@pytest.mark.parametrize("name, accepted", [("openai/whisper-base", True), ("whisper-base", True),
                                            ("no/such/model", False), ("./whisper-base", False)])
def test_names_that_are_no_folder_pass_only_as_hub_ids(name, accepted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # none of the names is a folder here
    for check in (lambda n: sources.resolve_model(n, "model_name"), sources.check_trainable_model):
        if accepted:
            check(name)
        else:
            with pytest.raises(OptionError, match=f"^--model_name {re.escape(name)}: no such folder, and not a Hub id"):
                check(name)


def test_training_needs_the_config_of_a_whisper_folder(tmp_path):
    sources.check_trainable_model(_folder(tmp_path, "whisper", {"config.json": {"model_type": "whisper"}}))
    weights_only = _folder(tmp_path, "weights", {"model.safetensors": ""})
    with pytest.raises(OptionError, match=r"^.*weights: folder holds no model \(no config.json\)$"):
        sources.check_trainable_model(weights_only)
    t5 = _folder(tmp_path, "t5", {"config.json": {"model_type": "t5"}})
    with pytest.raises(OptionError, match="not a Whisper model: its config.json says model_type 't5'"):
        sources.check_trainable_model(t5)

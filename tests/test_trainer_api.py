"""What the package takes from transformers' Trainer beyond its public API: one private name, pinned here.

Each private name of a library is a break on its next release, so the package may use at most one of
the Trainer's, and a change of that one's signature fails this test rather than a user's run.
"""
import ast
import inspect
import os
import re

import transformers
from conftest import REPO_ROOT
from transformers import Seq2SeqTrainer

# The one private Trainer name the package uses (whisper_finetune/train/trainer.py: load_best_model).
ALLOWED = {"_load_best_model"}


def _trainer_private_names():
    """Private names of the Trainer: methods and attributes of the class, and those its code sets on ``self``."""
    names = {name for name in dir(Seq2SeqTrainer) if name.startswith("_") and not name.startswith("__")}
    folder = os.path.dirname(transformers.__file__)
    for module in ("trainer.py", "trainer_seq2seq.py"):
        with open(os.path.join(folder, module), encoding="utf-8") as f:
            names |= set(re.findall(r"self\.(_[a-z]\w*)\s*=", f.read()))
    return names


def _attributes_used():
    """Every ``x._name`` the package reads, writes or defines as a method, with where."""
    used = {}
    for folder, _, files in os.walk(os.path.join(REPO_ROOT, "whisper_finetune")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute):
                    used.setdefault(node.attr, set()).add(os.path.relpath(path, REPO_ROOT))
                elif isinstance(node, ast.FunctionDef):
                    used.setdefault(node.name, set()).add(os.path.relpath(path, REPO_ROOT))
    return used


def test_the_package_uses_one_private_trainer_name_at_most():
    private = _trainer_private_names()
    assert "_save_checkpoint" in private and "_gen_kwargs" in private  # the scan finds both kinds
    used = {name: where for name, where in _attributes_used().items() if name in private}
    assert set(used) <= ALLOWED, used
    assert len(ALLOWED) <= 1


def test_the_private_name_keeps_its_signature():
    # Trainer._load_best_model(self): called with no argument by train.trainer.load_best_model.
    assert list(inspect.signature(Seq2SeqTrainer._load_best_model).parameters) == ["self"]

"""The README's flag tables are generated from the option dataclasses: the committed README is what
docs/build_readme.sh makes from docs/sections, so no table can drift from the flags."""
import os
import re
import subprocess

from conftest import REPO_ROOT


def test_readme_is_built_from_the_sections_and_the_option_declarations(tmp_path):
    script = open(os.path.join(REPO_ROOT, "docs", "build_readme.sh"), encoding="utf-8").read()
    names = re.search(r"for f in ([^;]+);", script).group(1).split()
    sections = os.path.join(REPO_ROOT, "docs", "sections")
    text = "".join(open(os.path.join(sections, n), encoding="utf-8").read() + "\n"
                   for n in names if os.path.exists(os.path.join(sections, n)))
    built = subprocess.run(["python3", os.path.join(REPO_ROOT, "docs", "flag_tables.py")], input=text,
                           capture_output=True, text=True, check=True).stdout
    assert "<!-- flags:" not in built and "| `--resume_from_ckpt` | `None` |" in built
    assert built == open(os.path.join(REPO_ROOT, "README.md"), encoding="utf-8").read()

"""The README's own commands, typed as written into a fresh copy of the project: the plain-Python path from
an empty venv to a trained model, a resume, the resume self-test and TensorBoard serving the run over HTTP on
127.0.0.1. (The Docker and --native paths run in tests/e2e/ with the same commands.)"""
import json
import os
import re
from pathlib import Path
import subprocess
import time
import urllib.request

import pytest

from conftest import REPO
from e2e.checkout import copy_project, free_port


def readme_block(heading):
    """The first ```bash block after a heading of the README."""
    text = (REPO / "README.md").read_text()
    start = text.index(heading + "\n")
    return re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)


def test_every_readme_command_block_names_real_scripts_and_flags():
    """Each train.py flag the README's blocks use exists (python train.py --help lists it)."""
    from src.app import flags
    known = {opt for action in flags.build_parser()._actions for opt in action.option_strings}
    text = (REPO / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            command = line.split("  #")[0]
            if "train.py" in command or command.lstrip().startswith("./run.sh"):
                for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", command):
                    if flag not in ("--native", "--nproc", "--rm", "--nproc_per_node", "--nnodes", "--node_rank",
                                    "--master_addr", "--master_port", "--standalone"):
                        assert flag in known, "README uses %s, which train.py does not know: %s" % (flag, line)
    for script in re.findall(r"(?m)^\./(\w+\.sh)", text):
        assert (REPO / script).is_file(), script


@pytest.mark.skipif(os.environ.get("SKIP_README_VENV") == "1", reason="SKIP_README_VENV=1")
def test_the_plain_python_path_works_as_written(tmp_path):
    root = tmp_path / "fresh-clone"
    root.mkdir()
    copy_project(root)
    block = readme_block("### Plain Python")
    script = "set -euo pipefail\n" + block
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    res = subprocess.run(["bash", "-c", script], cwd=str(root), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=1500)
    assert res.returncode == 0, res.stdout[-4000:]
    assert "verify-resume: PASS" in res.stdout, res.stdout[-3000:]
    assert (root / "models" / "best" / "digits-cnn.pt").is_file()
    assert "resuming from" in res.stdout and "done: 115 steps, 5 epochs" in res.stdout, res.stdout[-3000:]
    # the README's TensorBoard command, from the venv it made, on a free port
    port = free_port()
    tb = subprocess.Popen([str(root / ".venv" / "bin" / "tensorboard"), "--logdir", "logs", "--port", str(port)],
                          cwd=str(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, runs = time.time() + 90, {}
        while time.time() < deadline and "digits-cnn" not in runs:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/data/runs" % port, timeout=5) as resp:
                    runs = json.loads(resp.read().decode())
            except OSError:
                time.sleep(1)
        assert "digits-cnn" in runs
    finally:
        tb.terminate()
        tb.wait(timeout=30)


def test_the_flag_reference_lists_every_flag_with_when_to_use_it():
    """README "Flags and the config file": a table row for every flag of --help, each with a non-empty last cell."""
    import argparse
    from src.app import flags
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Flags and the config file"):text.index("## Docker in detail")]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    listed = {flag for row in rows for flag in re.findall(r"`(--[a-z][a-z0-9-]*)", row.split(" | ")[0])}
    for row in rows:
        assert len(row.rstrip(" |").split(" | ")[-1].strip()) > 10, "no 'when to use it' in: " + row
    for action in flags.build_parser()._actions:
        if action.help != argparse.SUPPRESS and action.dest != "help":
            assert action.option_strings[0] in listed, "README's flag reference lacks " + action.option_strings[0]


def _shown(flag):
    """A flag record's default as the README's table writes it: on/off, a number, a folder's name, a word."""
    if flag.type is bool:
        return "on" if flag.default else "off"
    if flag.name.endswith("-dir"):
        return Path(flag.default).name
    return flag.default


def test_the_flag_reference_shows_each_flags_own_default():
    """Every default the README's flag table states is the one its flag record holds (src/app/flags.py)."""
    from src.app import flags
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Flags and the config file"):text.index("## Docker in detail")]
    checked = 0
    for row in section.splitlines():
        if not row.startswith("| `--"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]
        names = re.findall(r"`--([a-z][a-z0-9-]*)", cells[0])
        shown = [s.strip() for s in cells[1].split(", ")] if cells[1] else []
        if len(shown) == 1:  # one value for all: `--width N`, `--depth N` | 0
            shown = shown * len(names)
        if len(shown) != len(names):
            assert not shown, "the defaults of %s do not line up with its flags: %r" % (cells[0], cells[1])
            continue
        for name, text_default in zip(names, shown):
            record = flags.BY_DEST[name.replace("-", "_")]
            value = re.sub(r"\s*\(.*\)$", "", text_default).strip("`").replace("\\|", "|")  # a Markdown \| is |
            if record.default is None or not value or value.isupper():  # None, or named after an env variable
                continue
            want = _shown(record)
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                assert float(value) == want, "README: --%s defaults to %s, its record to %r" % (name, value, want)
            else:
                assert value == str(want), "README: --%s defaults to %s, its record to %r" % (name, value, want)
            checked += 1
    assert checked >= 50


def test_the_layout_names_every_module_of_the_floors_and_nothing_that_is_gone():
    """README "Layout": each src/<floor>/ entry names that folder's modules, and every path it names exists."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("## Layout"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    named, folder = {}, None
    for line in block.splitlines():
        if line and not line.startswith(" "):
            first = line.split()[0]
            folder = first if first.startswith("src/") and first.endswith("/") else None
            for path in re.findall(r"^(src/[\w/]+\.py|[\w.]+\.(?:py|sh|yml|txt))\b", line):
                assert (REPO / path).exists(), "README Layout names %s, which does not exist" % path
        if folder:
            named.setdefault(folder, set()).update(re.findall(r"\b(\w+)\.py\b", line))
    for floor in ("app", "loop", "state", "files", "runtime"):
        have = {p.stem for p in (REPO / "src" / floor).glob("*.py") if p.stem != "__init__"}
        assert named.get("src/%s/" % floor) == have, "README Layout of src/%s/: %s, the folder: %s" % (
            floor, sorted(named.get("src/%s/" % floor, ())), sorted(have))

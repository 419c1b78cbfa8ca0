"""The README's own commands, typed as written into a fresh copy of the project: the plain-Python path from
an empty venv to a trained model, a resume, the resume self-test and TensorBoard serving the run over HTTP on
127.0.0.1. (The Docker and --native paths run in tests/e2e/ with the same commands.)"""
import json
import os
import re
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

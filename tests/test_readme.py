"""Every Python example of README.md runs as written.

Each ```python block runs in a fresh interpreter, in a temporary directory.
An HTML comment on the line before a block changes that:
``<!-- readme-test: skip (why) -->`` leaves it out (it needs two hosts, or
files only its reader has), and ``<!-- readme-test: background ... -->`` runs
it in the background while the next block runs (a server and its client);
both must exit 0.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
if not README.exists():
    # a copy of tests/ made without it: the Windows wheel's job, whose event
    # loop the asyncio example does not support
    pytest.skip("README.md is not beside tests/", allow_module_level=True)
BLOCK = re.compile(r"(?:^<!-- readme-test: (\w+)[^\n]*-->\n)?^```python\n(.*?)^```$", re.M | re.S)
TIMEOUT = 120


@dataclass
class Example:
    line: int
    code: str
    mode: str  # "run", "skip" or "background"


def examples() -> list[Example]:
    text = README.read_text("utf-8")
    found = []
    for match in BLOCK.finditer(text):
        mode = match.group(1) or "run"
        assert mode in ("run", "skip", "background"), f"unknown readme-test mode {mode!r}"
        line = text.count("\n", 0, match.start(2)) + 1
        found.append(Example(line, match.group(2), mode))
    return found


def cases() -> list[object]:
    """The blocks to run, a background block together with the one after it."""
    found = examples()
    params: list[object] = []
    for index, example in enumerate(found):
        if example.mode == "background":
            client = found[index + 1]
            assert client.mode == "run", f"README.md:{example.line}: no block to run beside it"
            params.append(pytest.param(example, client, id=f"line{example.line}+{client.line}"))
        elif example.mode == "run" and (index == 0 or found[index - 1].mode != "background"):
            params.append(pytest.param(None, example, id=f"line{example.line}"))
    return params


def skip_without_imports(example: Example) -> None:
    """Skip an example that imports an optional dependency not installed here."""
    for node in ast.walk(ast.parse(example.code)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.partition(".")[0]
            if importlib.util.find_spec(top) is None:
                pytest.skip(f"README.md:{example.line} needs {top}, not installed")


def script(example: Example, tmp_path: Path) -> Path:
    path = tmp_path / f"readme_line{example.line}.py"
    path.write_text(example.code, "utf-8")
    return path


def run_script(example: Example, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, script(example, tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    check_exit(example, run.returncode, run.stdout + run.stderr)


def check_exit(example: Example, returncode: int, output: str) -> None:
    assert returncode == 0, f"README.md:{example.line} exited {returncode}:\n{output}"


def test_readme_has_examples_to_run() -> None:
    found = examples()
    assert len(found) == README.read_text("utf-8").count("```python")  # none indented or missed
    assert sum(example.mode != "skip" for example in found) >= 5
    assert all(example.code.strip() for example in found)


@pytest.mark.parametrize(("background", "example"), cases())
def test_readme_example_runs(background: Example | None, example: Example, tmp_path: Path) -> None:
    skip_without_imports(example)
    if background is None:
        run_script(example, tmp_path)
        return
    skip_without_imports(background)
    server = subprocess.Popen(
        [sys.executable, script(background, tmp_path)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        run_script(example, tmp_path)
        output, _ = server.communicate(timeout=TIMEOUT)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    check_exit(background, server.returncode, output)

"""The documentation's Python code blocks run.

Every ```python block of README.md and docs/*.md is one test. Each block runs alone, in a fresh namespace
of its own fresh process (``sys.executable``, so the torch of this leg; cwd = the repository root, so
``import torch_rnn_ext`` imports the package there; a timeout): a block must be complete, as a user copying
it would run it, and cannot lean on names defined by an earlier block. The block's source is compiled with
the Markdown file as its file name and padded to its line numbers, so a traceback points at the line of
the Markdown file that raised; a failing block fails its test with file:line and the error.

Blocks that are not Python (sh, cpp, cmake, unlabelled) are not run. A Python block can be marked by an
HTML comment (invisible on GitHub), alone on the line right before its opening fence:

- ``<!-- test: covered by PATH [why] -->``: not run here (it needs torchrun, a C++ toolchain or files);
  PATH, relative to the repository root, is the test or fixture that runs its code, and must exist.
- ``<!-- test: torch>=2 -->``: needs torch 2.x (torch.compile, torch.export, or the transformers pinned in
  the 2.x environment); runs on the 2.x leg and is
  reported as skipped, naming the block, on torch 1.x.

Any other ``<!-- test: ... -->`` comment, or one not right before a Python block, fails
``test_markers_are_known_and_attached``.
"""
import getpass
import glob
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from typing import List, Optional

import pytest
import torch

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TIMEOUT_S = 600
TORCH_MAJOR = int(torch.__version__.split(".")[0])

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)\s*(?P<lang>[^\s`]*)")
MARKER = re.compile(r"^\s*<!--\s*test:\s*(?P<body>.*?)\s*-->\s*$")   # a line of its own
COVERED = re.compile(r"^covered by\s+(?P<path>\S+)(\s+.*)?$")
TORCH2 = "torch>=2"


@dataclass
class Block:
    path: str            # absolute path of the Markdown file
    line: int            # 1-based line of the block's first code line
    lang: str
    source: str          # dedented code
    marker: Optional[str]  # the body of the <!-- test: ... --> comment right before the fence, if any

    @property
    def where(self) -> str:
        return f"{os.path.relpath(self.path, REPO_ROOT)}:{self.line}"


def markdown_files() -> List[str]:
    return [os.path.join(REPO_ROOT, "README.md")] + sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))


def extract_blocks(path: str) -> List[Block]:
    """Every fenced code block of a Markdown file, with the marker comment right before its fence."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group("indent"), m.group("fence"), m.group("lang").lower()
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence[0] * len(fence))
                                      and lines[j].strip().strip(fence[0]) == ""):
            j += 1
        if j == len(lines):
            raise AssertionError(f"{os.path.relpath(path, REPO_ROOT)}:{i + 1}: code block never closed")
        body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:j]]
        prev = MARKER.search(lines[i - 1]) if i > 0 else None
        blocks.append(Block(path, i + 2, lang, textwrap.dedent("\n".join(body)) + "\n",
                            prev.group("body") if prev else None))
        i = j + 1
    return blocks


def all_blocks() -> List[Block]:
    return [b for p in markdown_files() for b in extract_blocks(p)]


def python_blocks() -> List[Block]:
    return [b for b in all_blocks() if b.lang in ("python", "py", "python3")]


# The child: a fresh __main__ module for the block (so classes it defines pickle as __main__.X), the code
# compiled under the Markdown file's name, padded so that its line numbers are the file's.
RUNNER = r"""
import sys, types
path, first_line = sys.argv[1], int(sys.argv[2])
source = sys.stdin.read()
code = compile("\n" * (first_line - 1) + source, path, "exec")
main = types.ModuleType("__main__")
main.__file__ = path
sys.modules["__main__"] = main
del path, first_line, source
exec(code, main.__dict__)
"""


def run_block(block: Block, tmpdir: str, timeout: float = TIMEOUT_S) -> None:
    """Runs one Python block in a fresh process (cwd = the repository root; TMPDIR = tmpdir, so files a block
    writes under tempfile.mkdtemp() land in pytest's tmp_path); fails with the block's file:line and the
    error if it raises."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TMPDIR"] = str(tmpdir)
    # keep inductor's compile cache where it is by default, not in the fresh TMPDIR
    env.setdefault("TORCHINDUCTOR_CACHE_DIR",
                   os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}"))
    try:
        r = subprocess.run([sys.executable, "-c", RUNNER, block.path, str(block.line)], input=block.source,
                           capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.where}: python block did not finish in {timeout} s", pytrace=False)
    if r.returncode != 0:
        tail = r.stderr.strip().splitlines()
        error = tail[-1] if tail else f"exit status {r.returncode}"
        pytest.fail(f"{block.where}: python block failed: {error}\n--- stderr ---\n{r.stderr[-4000:]}",
                    pytrace=False)


def marker_kind(marker: Optional[str]) -> str:
    if marker is None:
        return "run"
    if marker == TORCH2:
        return "torch2"
    if COVERED.match(marker):
        return "covered"
    return "unknown"


BLOCKS = python_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_python_block(block, tmp_path):
    kind = marker_kind(block.marker)
    if kind == "unknown":
        pytest.fail(f"{block.where}: unknown marker <!-- test: {block.marker} -->", pytrace=False)
    if kind == "covered":
        target = COVERED.match(block.marker).group("path")
        assert os.path.isfile(os.path.join(REPO_ROOT, target)), \
            f"{block.where}: the marker names {target}, which does not exist"
        return
    if kind == "torch2" and TORCH_MAJOR < 2:
        pytest.skip(f"{block.where}: block needs torch 2.x (torch.compile/torch.export, or transformers); "
                    f"this is torch {torch.__version__}")
    run_block(block, tmp_path)


def test_the_readme_blocks_are_found():
    """Guards the extractor: if it found nothing (or skipped blocks), every block test would vanish quietly."""
    readme = [b for b in BLOCKS if b.path.endswith("README.md")]
    sources = "\n".join(b.source for b in readme)
    assert len(readme) >= 5, [b.where for b in readme]
    for needle in ("torch_rnn_ext.convert(existing_model)", "torch_rnn_ext.Streamer(model)",
                   "torch.export.export(", "DistributedDataParallel", "torch.save(model, path)"):
        assert needle in sources, needle
    assert {b.lang for b in all_blocks()} >= {"python", "sh", "cpp", "cmake"}
    assert sum(marker_kind(b.marker) == "run" for b in readme) >= 3


def marker_problems(paths: List[str]) -> List[str]:
    """Markers that are unknown, not right before a Python block's fence, or name a missing file."""
    attached = {(b.path, b.line - 2) for p in paths for b in extract_blocks(p)            # (file, 1-based line)
                if b.marker is not None and b.lang in ("python", "py", "python3")}
    problems = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f.read().split("\n"), start=1):
                m = MARKER.search(line)
                if not m:
                    continue
                where = f"{os.path.relpath(path, REPO_ROOT)}:{n}"
                if marker_kind(m.group("body")) == "unknown":
                    problems.append(f"{where}: unknown marker {m.group(0)}")
                elif (path, n) not in attached:
                    problems.append(f"{where}: marker not on the line right before a ```python fence")
                elif marker_kind(m.group("body")) == "covered":
                    target = COVERED.match(m.group("body")).group("path")
                    if not os.path.isfile(os.path.join(REPO_ROOT, target)):
                        problems.append(f"{where}: names {target}, which does not exist")
    return problems


def test_markers_are_known_and_attached():
    """Every <!-- test: ... --> comment is a known marker, right before the fence of a Python block."""
    problems = marker_problems(markdown_files())
    assert not problems, "\n".join(problems)


# ---- the checker itself ---------------------------------------------------------------------------------

SAMPLE = """# Sample

Text.
```python
import math
x = math.sqrt(4)
```

<!-- test: covered by tests/python/test_ddp.py (needs torchrun) -->
```python
undefined_name_in_a_covered_block
```

  ```sh
  exit 1
  ```
- A list item:
  ```python
  y = 1
  assert y + 1 == 2
  ```

```python
import math
z = 1 / (math.sqrt(4) - 2)
```
"""


def test_extraction_and_markers_on_a_sample(tmp_path):
    md = tmp_path / "sample.md"
    md.write_text(SAMPLE)
    blocks = extract_blocks(str(md))
    assert [(b.line, b.lang, b.marker) for b in blocks] == [
        (5, "python", None), (11, "python", "covered by tests/python/test_ddp.py (needs torchrun)"),
        (15, "sh", None), (19, "python", None), (24, "python", None)]
    assert blocks[3].source == "y = 1\nassert y + 1 == 2\n"          # list-item indentation removed
    assert [marker_kind(b.marker) for b in blocks] == ["run", "covered", "run", "run", "run"]
    assert marker_kind("torch>=2") == "torch2" and marker_kind("skip") == "unknown"


def test_a_failing_block_fails_with_its_file_line_and_error(tmp_path):
    md = tmp_path / "sample.md"
    md.write_text(SAMPLE)
    blocks = extract_blocks(str(md))
    run_block(blocks[0], tmp_path, timeout=120)
    run_block(blocks[3], tmp_path, timeout=120)
    with pytest.raises(pytest.fail.Exception) as e:
        run_block(blocks[4], tmp_path, timeout=120)
    message = str(e.value)
    assert message.startswith(f"{os.path.relpath(str(md), REPO_ROOT)}:24: python block failed: "
                              "ZeroDivisionError: float division by zero"), message
    assert f'File "{md}", line 25' in message          # the traceback points at the Markdown line
    assert "z = 1 / (math.sqrt(4) - 2)" in message     # and shows it


def test_bad_markers_are_reported(tmp_path):
    md = tmp_path / "bad.md"
    md.write_text("<!-- test: skip -->\n```python\nx = 1\n```\n\n<!-- test: torch>=2 -->\n\n```python\ny = 1\n```\n"
                  "<!-- test: covered by tests/python/test_no_such_file.py -->\n```python\nz = 1\n```\n"
                  "<!-- test: torch>=2 -->\n```sh\ntrue\n```\n"
                  "Prose mentioning `<!-- test: ... -->` markers inline is not a marker.\n")
    rel = os.path.relpath(str(md), REPO_ROOT)
    assert marker_problems([str(md)]) == [
        f"{rel}:1: unknown marker <!-- test: skip -->",
        f"{rel}:6: marker not on the line right before a ```python fence",
        f"{rel}:11: names tests/python/test_no_such_file.py, which does not exist",
        f"{rel}:15: marker not on the line right before a ```python fence"]
    blocks = extract_blocks(str(md))
    with pytest.raises(pytest.fail.Exception, match=re.escape(f"{rel}:3: unknown marker")):
        test_python_block(blocks[0], tmp_path)
    with pytest.raises(AssertionError, match="test_no_such_file.py, which does not exist"):
        test_python_block(blocks[2], tmp_path)

"""Issue 22's hostile configs: a file that is not UTF-8 and YAML alias bombs are one line and exit 2, quickly and in
bounded memory (they were a traceback, exit 1, or memory without bound)."""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arena_kd.common.config import load_config
from arena_kd.common.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = (ROOT / "configs/smoke.yaml").read_text()
# 9 levels of 10 aliases each: 10^9 values from 10 lines
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def _cli(*args: str, memory_gib: float = 2.0) -> subprocess.CompletedProcess:
    """`arena-kd ARGS` under an address-space limit, so a bomb that escapes the bound fails instead of swapping."""
    limit = int(memory_gib * 2**30)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-c", "from arena_kd.cli import main; main()", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, preexec_fn=cap)


def _one_line_exit_2(res: subprocess.CompletedProcess, *fragments: str) -> str:
    err = res.stderr.strip()
    assert res.returncode == 2, (res.returncode, res.stderr[-1500:])
    assert "Traceback" not in res.stderr and "\n" not in err and err.startswith("error: "), err
    for f in fragments:
        assert f in err, err
    return err


def test_config_that_is_not_utf8_is_one_line(tmp_path):
    p = tmp_path / "latin.yaml"
    p.write_bytes(SMOKE.replace("workdir:", "# café\nworkdir:", 1).encode("latin-1"))
    with pytest.raises(UserError, match=r"latin.yaml: line \d+: not UTF-8 text \(byte 0xe9\)"):
        load_config(p)
    _one_line_exit_2(_cli("teachers", "--config", str(p)), "latin.yaml", "not UTF-8")
    # a UTF-8 byte-order mark is fine
    (tmp_path / "bom.yaml").write_bytes(b"\xef\xbb\xbf" + SMOKE.encode())
    assert load_config(tmp_path / "bom.yaml").workdir


def test_recursive_alias_is_one_line(tmp_path):
    p = tmp_path / "loop.yaml"
    p.write_text(SMOKE + "x: &a [*a]\n")
    with pytest.raises(UserError, match=r"loop.yaml: line \d+: recursive YAML alias"):
        load_config(p)
    _one_line_exit_2(_cli("teachers", "--config", str(p)), "recursive YAML alias")


def test_billion_laughs_is_refused_quickly_in_bounded_memory(tmp_path):
    """Only in a subprocess under a memory cap: the old code expanded the bomb without bound (and must not take the
    test machine with it)."""
    p = tmp_path / "bomb.yaml"
    p.write_text(SMOKE + BILLION_LAUGHS)
    t0 = time.monotonic()
    err = _one_line_exit_2(_cli("teachers", "--config", str(p)), "bomb.yaml: YAML aliases expand to", "alias bomb")
    assert re.search(r"expand to 1,\d{3},\d{3},\d{3} values", err), err
    assert time.monotonic() - t0 < 60  # no expansion happened


def test_alias_bombs_in_a_set_value_are_one_line():
    with pytest.raises(UserError, match=r"--set data.extra: line 1: recursive YAML alias"):
        load_config(ROOT / "configs/smoke.yaml", ["data.extra=&a [*a]"])
    levels = ["&a [" + ", ".join(["lol"] * 10) + "]"]
    levels += [f"&{c} [{', '.join([f'*{p}'] * 10)}]" for p, c in zip("abcde", "bcdef")]  # 10^6 values
    with pytest.raises(UserError, match=r"--set data.extra: YAML aliases expand to"):
        load_config(ROOT / "configs/smoke.yaml", [f"data.extra=[{', '.join(levels)}]"])

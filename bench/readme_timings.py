"""The README's two commands on a fresh clone, timed: what a new user waits for, with the torch version.

Clones this repository (its last commit) into a temporary folder, then runs exactly the README's first
command (virtual environment, install, the main job) and its second (virtual environment, install, the
tests), timing every part. Prints the figures the README states.

    python bench/readme_timings.py            # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: str, cwd: Path) -> tuple[float, str]:
    """Seconds a shell command takes, and its output (it must succeed)."""
    start = time.perf_counter()
    result = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"'{command}' failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout + result.stderr


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    return [blocks[0].strip(), blocks[1].strip()]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    run_command, test_command = readme_commands()
    with tempfile.TemporaryDirectory(prefix="warmstart-readme-") as folder:
        for name, command in (("main job", run_command), ("tests", test_command)):
            clone = Path(folder) / name.replace(" ", "_")
            subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
            setup, work = command.rsplit(" && ", 1)  # "python3 -m venv .venv && pip install ..." and the command
            install_seconds, _ = timed(setup, clone)
            work_seconds, output = timed(work, clone)
            torch = subprocess.run([str(clone / ".venv/bin/python"), "-c", "import torch; print(torch.__version__)"],
                                   capture_output=True, text=True).stdout.strip()
            print(f"{name}: install {install_seconds:.0f} s, then '{work}' {work_seconds:.0f} s "
                  f"({install_seconds + work_seconds:.0f} s in all; torch {torch})")
            tail = [line for line in output.splitlines() if line.strip()][-16:]
            print("  " + "\n  ".join(tail))


if __name__ == "__main__":
    main()

"""Start-up time of the `contourqa` command beside a bare Python interpreter, in the same run.

    python bench/bench_cli.py [--repeat 5]

Commands that do not assess anything (`--help`, `--version`, `status`) must answer in under a second:
each part's command module imports its heavy libraries (torch, SimpleITK, Celery) only when run.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contourqa.daemon.db import open_database


def seconds(command: list[str], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        open_database(f"sqlite:///{Path(home) / 'contourqa.sqlite'}")  # a node's home, the node not running
        cli = [sys.executable, "-m", "contourqa"]
        bare = seconds([sys.executable, "-c", "pass"], args.repeat)
        print(f"{'command':<36} {'seconds':>8} {'ratio to python -c pass':>24}")
        print(f"{'python -c pass':<36} {bare:8.3f} {1:24.1f}")
        for name, extra in (("contourqa --help", ["--help"]), ("contourqa --version", ["--version"]),
                            ("contourqa status (node stopped)", ["status", "--home", home])):
            value = seconds(cli + extra, args.repeat)
            print(f"{name:<36} {value:8.3f} {value / bare:24.1f}")


if __name__ == "__main__":
    main()

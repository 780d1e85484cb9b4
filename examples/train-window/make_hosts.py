"""Two host roots for examples/train-window.json, as two machines would hold them: each gets the same dataset
(made deterministically, so it matches the fingerprint in the manifest) and a copy of the tiny trainer.

    python examples/train-window/make_hosts.py [DIR]     (default: ./hosts)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tiny_trainer import make_dataset

HERE = Path(__file__).resolve().parent
HOSTS = ("host-a", "host-b")


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "hosts")
    for label in HOSTS:
        root = out / label
        make_dataset(root / "data", n_train=400, n_valid=100, n_test=100, dim=8, seed=7)
        shutil.copy(HERE / "tiny_trainer.py", root / "tiny_trainer.py")
        print(f"{root}: data/ and tiny_trainer.py; its agent: bucketrun agent --labels {label} --root {root}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Recreate data/magnetic_tile_subset from a full magnetic-tile tree in MVTec layout (run by hand, once).

    python data/make_magnetic_tile_subset.py --source /path/to/magnetic_tile

The subset is committed so that a fresh clone runs the default job on real defects without any download.
Selection: files sorted by name, a seeded (numpy, seed 0) choice without replacement per folder.
"""
import argparse
import shutil
from pathlib import Path

import numpy as np

COUNTS = {"train/good": 16, "test/good": 10, "test/blowhole": 4, "test/break": 4, "test/crack": 4,
          "test/fray": 4, "test/uneven": 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", required=True, type=Path)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "magnetic_tile_subset")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for folder, n in COUNTS.items():
        files = sorted((args.source / folder).glob("*.jpg"))
        chosen = sorted(files[i] for i in rng.choice(len(files), n, replace=False))
        for f in chosen:
            dst = args.out / folder / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
            defect = folder.split("/")[1]
            if folder.startswith("test/") and defect != "good":
                mask = args.source / "ground_truth" / defect / f"{f.stem}_mask.png"
                (args.out / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
                shutil.copyfile(mask, args.out / "ground_truth" / defect / mask.name)


if __name__ == "__main__":
    main()

"""Copy a CROHME-layout folder with its images quantised to 16 grey levels, to carry it to a GPU machine.

The synthetic formula images are near-binary (white ink on black with anti-aliased edges and noise);
16 levels keep the edges and shrink the PNGs about 3x (14,400 images: 48 MB); ``--levels 8`` (3 bits of
grey, stored as 4-bit PNG) about 4x (34 MB), which is what fits the 64 MiB a call to the lent GPU machine
may carry next to the repository (15 MB) and the wheels it needs. Training on the copy is training on
slightly different pixels: say so wherever a model trained on it is reported.

    python benchmarks/pack_math_corpus.py corpora/math/train .gpu_math/train --levels 8
    python benchmarks/pack_math_corpus.py corpora/math/test .gpu_math/test --levels 8 --limit 512
    tar -czf .gpu_pack/math.tgz .gpu_math
"""

from __future__ import annotations

import argparse
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

LEVELS = 16


def quantise(pixels: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """`(H, W)` uint8 -> the index of the nearest of ``levels`` evenly spaced grey levels (0 and 255 kept),
    which is what a ``levels``-colour palette PNG stores."""
    return np.round(pixels.astype(np.float32) / (255 / (levels - 1))).astype(np.uint8)


def _copy(job: tuple[Path, Path], levels: int = LEVELS) -> None:
    src, dst = job
    index = quantise(np.asarray(Image.open(src).convert("L")), levels)
    image = Image.fromarray(index, "P")
    image.putpalette([round(v * 255 / (levels - 1)) for v in range(levels) for _ in range(3)])
    image.save(dst, format="PNG", bits=4, optimize=True)  # 4 bits per pixel before deflate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="CROHME-layout folder: caption.txt and img/")
    parser.add_argument("dst", type=Path)
    parser.add_argument("--limit", type=int, help="copy only the first N captions")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--levels", type=int, default=LEVELS, help="grey levels kept, 2 to 16")
    args = parser.parse_args()
    if not 2 <= args.levels <= 16:
        parser.error(f"--levels must lie in 2..16 (a 4-bit palette), got {args.levels}")
    lines = (args.src / "caption.txt").read_text().splitlines()[: args.limit]
    (args.dst / "img").mkdir(parents=True, exist_ok=True)
    (args.dst / "caption.txt").write_text("".join(line + "\n" for line in lines))
    names = [line.split("\t")[0].split()[0] for line in lines]
    jobs = [(args.src / "img" / f"{n}.png", args.dst / "img" / f"{n}.png") for n in names]
    with Pool(args.jobs) as pool:
        pool.map(partial(_copy, levels=args.levels), jobs, chunksize=64)
    print(f"{len(jobs)} images at {args.levels} grey levels -> {args.dst}")


if __name__ == "__main__":
    main()

"""`python -m livelm.data.shop --out DIR [--seed N]`: write the shop corpus (pretrain.txt, chat_train.jsonl,
chat_heldout.jsonl) and print the three paths."""
from __future__ import annotations

import argparse

from livelm.data import shop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m livelm.data.shop",
                                     description="Write the Maple Leaf Shop corpus (the demo's data set).")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in shop.write(args.out, seed=args.seed).values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

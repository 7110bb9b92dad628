"""`livelm demo` (what `make demo` runs): build the default assistant once (livelm/demo.py), then chat with it."""
from __future__ import annotations

import argparse
from pathlib import Path

from livelm.cli import emit, log

PARSER_KW = {"demo": {"description": "Build the default bilingual assistant (a fictional shop's customer service, "
                                     "Chinese and English) from the built-in data, once, then chat with it. The "
                                     "build is cached in --out and rebuilt only when the recipe or its data change.",
                      "formatter_class": argparse.RawDescriptionHelpFormatter}}


def demo_flags(p) -> None:
    p.add_argument("--out", type=Path, default=Path("runs") / "assistant", help="where the build goes (default %(default)s)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even if the cached assistant is current")
    p.add_argument("--build-only", action="store_true", help="build (or verify the cache), print its report and exit")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="training dtype (default auto: bf16 only where this CPU computes it natively)")


def run_demo(a) -> int:
    import json
    from livelm.cli import main
    from livelm.demo import build
    run = build(a.out, force=a.rebuild, dtype=a.dtype)
    report = json.loads((a.out / "build.json").read_text())
    log(f"default assistant: {run}  (held-out accuracy en {report['accuracy_en']:.0%}, zh {report['accuracy_zh']:.0%})")
    if a.build_only:
        emit({k: v for k, v in report.items() if k != "failures"})
        return 0
    return main(["chat", str(run), "--temperature", "0"])

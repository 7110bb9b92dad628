"""Hostile files (issue 25): every case of tests/reliability/cases.py, how livelm refused it.

    .venv/bin/python bench/hostile_files.py            # one JSON line per case, then a summary line
    .venv/bin/python bench/hostile_files.py bomb GGUF  # only the cases whose names contain these

Each case runs in a fresh child process, so its peak resident memory (ru_maxrss) is its own:
a file that declares a 4 TB tensor must be refused without allocating it. The hypothesis fuzzing
is in tests/reliability/test_fuzz_readers.py, not here.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.reliability import cases  # noqa: E402

TIMEOUT_S = 60
AS_LIMIT = 16 << 30       # address space of a case's process (torch alone maps a few GB)


def _one(i: int, q) -> None:
    # a safety net, not the measurement: a case that slips through must not take the machine down
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
    case = cases.ALL[i]
    with tempfile.TemporaryDirectory() as d:
        call = case.build(Path(d))
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        try:
            call()
            exc, msg = None, "accepted"
        except BaseException as e:   # noqa: BLE001 - what was raised is the result
            exc, msg = type(e).__name__, str(e)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ok = exc in {c.__name__ for c in cases.allowed()[case.file]}
        q.put({"file": case.file, "case": case.name, "refused_with": exc, "message": msg[:100],
               "seconds": round(seconds, 3), "peak_rss_mb": round(peak, 1), "rss_growth_mb": round(peak - base, 1),
               "ok": ok})


def main() -> int:
    ctx = mp.get_context("fork")
    rows = []
    only = sys.argv[1:]          # optional: substrings of the case names to run
    for i, case in enumerate(cases.ALL):
        if only and not any(o in case.name for o in only):
            continue
        q = ctx.Queue()
        p = ctx.Process(target=_one, args=(i, q))
        p.start()
        p.join(TIMEOUT_S)
        if p.is_alive():
            p.kill()
            p.join()
            row = {"file": case.file, "case": case.name, "refused_with": None, "message": f"hung > {TIMEOUT_S}s",
                   "seconds": TIMEOUT_S, "peak_rss_mb": None, "ok": False}
        elif q.empty():
            row = {"file": case.file, "case": case.name, "refused_with": None,
                   "message": f"child died (exit {p.exitcode})", "seconds": None, "peak_rss_mb": None, "ok": False}
        else:
            row = q.get()
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), flush=True)
    bad = [r["case"] for r in rows if not r["ok"]]
    print(json.dumps({"summary": True, "cases": len(rows), "refused_clearly": len(rows) - len(bad), "bad": bad,
                      "max_seconds": max((r["seconds"] or 0) for r in rows),
                      "max_peak_rss_mb": max((r["peak_rss_mb"] or 0) for r in rows)}, ensure_ascii=False))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

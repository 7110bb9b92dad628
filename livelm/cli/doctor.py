"""`livelm doctor`: what this machine is (CPU capability, bf16, compile, threads) and what `auto` chose for it."""
from __future__ import annotations

from livelm.cli import emit

PARSER_KW = {"doctor": {"description": "Detect the CPU (and GPU), measure fp32 and bf16 matmul rates and the quantized "
                                       "kernels, probe torch.compile, and print the dtype, compile and thread choices "
                                       "that `auto` makes here (the measurements are cached per machine)."}}


def doctor_flags(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.add_argument("--remeasure", action="store_true",
                   help="forget this machine's cached measurements first (e.g. ones taken while it was busy)")


def run_doctor(a) -> int:
    import torch
    from livelm import machine
    from livelm.machine import pick_device
    if a.remeasure:
        machine.forget_cache()
    m = machine.detect(pick_device(a.device), measure=True)
    report = m.to_dict()
    if m.device == "cpu":
        from livelm.models.quantized import measure_kernels
        report["quantized_kernels"] = {meth: measure_kernels(meth, 1024, 2816) for meth in ("int8", "int4")}
    report["cache"] = str(machine.cache_dir() / "machine.json")
    if a.json:
        emit(report)
        return 0
    rates = ", ".join(f"{k.removeprefix('matmul_')} {v} GFLOP/s" for k, v in m.rates.items())
    lines = [f"device        {m.device}{' (' + m.accelerator + ')' if m.accelerator else ''}",
             f"cpu           {m.cpu_model}",
             f"capability    ATen {m.cpu_capability}; flags {' '.join(m.cpu_flags) or '(none readable)'}; "
             f"oneDNN bf16 {'yes' if m.onednn_bf16 else 'no'}",
             f"bf16          {m.bf16_reason}",
             f"matmul        {rates} (256x256, {m.threads} threads)",
             f"threads       {m.threads} of {m.usable_cpus} usable CPUs (torch {torch.__version__})",
             f"compile       {'works' if m.reasons.get('compile') == 'a tiny graph compiled' else 'unavailable'}: "
             f"{m.reasons.get('compile', '')}",
             f"choices       training dtype {m.train_dtype}; inference dtype {m.infer_dtype} for batched models "
             f"past the caches, float32 at batch 1 on CPUs",
             f"              {m.reasons['compile_auto']}"]
    for meth, k in report.get("quantized_kernels", {}).items():
        us = k["1_rows_us"]
        lines.append(f"{meth + ' kernels':<14}decode {k['decode']} ({us.get(k['decode'], us['fp32'])} µs vs fp32 "
                     f"{us['fp32']} µs), prefill {k['prefill']} (1024->2816 layer)")
    lines.append(f"cache         {report['cache']}")
    print("\n".join(lines))
    return 0

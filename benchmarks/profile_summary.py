"""Where a profiled training step spends its time: per XLA op and per kind of op.

    python benchmarks/train_step.py ... --profile_dir=PROF
    python benchmarks/profile_summary.py PROF [--module=jit_train_step] [--top=25]

Reads the Chrome-format trace (`*.trace.json.gz`) that jax.profiler writes and adds up the
duration of every event that names an HLO op of the module, on the device's timelines where
there are any (GPU, TPU), else on the host's (CPU). Kinds are op names without their numeric
suffix (fusion, custom-call, copy, ...); a custom-call is a library kernel (cuBLAS, cuDNN). An op
that runs others (while, call, command_buffer) counts their time again. On a GPU, XLA runs the
step as a few command buffers, so the per-kernel view is the useful one there: kernels by name
(layers share a fusion's kernel, so one name sums all layers) and by class (matmul, attention,
reduction, elementwise), which shows how much of the step is memory-bound. Needs
no profiler plugin, so the summary can be printed on the machine that ran the step.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re


def load_events(profile_dir: str) -> tuple[list[dict], dict[int, str]]:
    paths = sorted(glob.glob(os.path.join(profile_dir, "**", "*.trace.json.gz"), recursive=True))
    if not paths:
        raise FileNotFoundError(f"no *.trace.json.gz under {profile_dir}: was it written by "
                                "jax.profiler (benchmarks/train_step.py --profile_dir)?")
    with gzip.open(paths[-1]) as file:  # the newest trace of the folder
        events = json.load(file)["traceEvents"]
    processes = {event["pid"]: event["args"]["name"] for event in events
                 if event.get("ph") == "M" and event.get("name") == "process_name"}
    return events, processes


def op_durations(events: list[dict], processes: dict[int, str], module: str):
    """({hlo_op: total microseconds}, {kernel or event name: total microseconds}), on device
    timelines when the trace has them. On a GPU the event name is the kernel's (a cuBLAS or
    cuDNN gemm, a Triton fusion, XLA's loop or reduction emitter), which says what an op is."""
    device_pids = {pid for pid, name in processes.items()
                   if "/device:" in name and "CPU" not in name}
    totals = collections.Counter()
    kernels = collections.Counter()
    for event in events:
        args = event.get("args", {})
        if event.get("ph") != "X" or "hlo_op" not in args:
            continue
        if module and args.get("hlo_module") != module:
            continue
        if device_pids and event["pid"] not in device_pids:
            continue
        totals[args["hlo_op"]] += event.get("dur", 0.0)
        kernels[event.get("name", "?")] += event.get("dur", 0.0)
    return totals, kernels


_KERNEL_CLASSES = (  # first match wins; GPU kernel names (XLA's fusions, cuBLAS, cuDNN)
    ("matmul", re.compile(r"nvjet|gemm|cutlass|xmma|cublas", re.I)),
    ("attention", re.compile(r"sdpa|flash|cudnn", re.I)),
    ("reduction", re.compile(r"reduce", re.I)),
    ("elementwise", re.compile(r"loop_|fusion|convert|concatenate|copy|memset", re.I)),
)


def kernel_class(name: str) -> str:
    """matmul, attention, reduction, elementwise or other: where memory-bound time hides."""
    return next((label for label, pattern in _KERNEL_CLASSES if pattern.search(name)), "other")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile_dir")
    parser.add_argument("--module", default="jit_train_step",
                        help="HLO module to count ('' for all)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--steps", type=int, default=3, help="steps in the trace")
    args = parser.parse_args()

    events, processes = load_events(args.profile_dir)
    totals, kernels = op_durations(events, processes, args.module)
    if not totals:
        raise SystemExit(f"no events of module {args.module!r}; timelines: "
                         f"{sorted(processes.values())}")
    op_total, kernel_total = sum(totals.values()), sum(kernels.values())
    print(f"op time per step: {op_total / args.steps / 1000:.2f} ms over {len(totals)} ops")
    kinds = collections.Counter()
    for op, micros in totals.items():
        kinds[re.sub(r"[.\d]+$", "", op)] += micros
    print("by kind:")
    for kind, micros in kinds.most_common(10):
        print(f"  {kind:<40} {micros / args.steps / 1000:9.2f} ms  {micros / op_total:6.1%}")
    classes = collections.Counter()
    for name, micros in kernels.items():
        classes[kernel_class(name)] += micros
    print("by class of kernel:")
    for label, micros in classes.most_common():
        print(f"  {label:<40} {micros / args.steps / 1000:9.2f} ms  {micros / kernel_total:6.1%}")
    print(f"top {args.top} kernels:")
    for name, micros in kernels.most_common(args.top):
        print(f"  {name[:100]:<100} {micros / args.steps / 1000:9.3f} ms")
    print(f"top {args.top} ops:")
    for op, micros in totals.most_common(args.top):
        print(f"  {op:<40} {micros / args.steps / 1000:9.3f} ms")


if __name__ == "__main__":
    main()

"""GPU timings of fedbcs_ops: Triton vs PyTorch path vs literal reference, and GB/s.

Bandwidth is bytes that must move (read + written) over the time, compared with a
device-to-device copy of a large buffer timed in the same run. Called by gpu_check.sh.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import triton.testing

from fedbcs_ops import class_sums, fsr, reference

FSR_SHAPES = [(6, 64, 128, 128), (6, 256, 32, 32), (32, 64, 256, 256)]
CLASS_SUMS_SHAPES = [((6, 768, 128, 128), (6, 128, 128)), ((6, 768, 128, 128), (6, 512, 512))]
# Elements of x moved per FSR pass: forward reads x twice and writes once; backward reads
# (g, x) twice and writes dx once.
FSR_PASSES = {"forward": 3, "backward": 5, "full": 8}


def bench(fn, setup=None) -> float:
    """Median milliseconds; ``setup`` runs untimed before each call when given."""
    if setup is None:
        return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
    times = []
    for _ in range(30):
        setup()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    src = torch.empty(2**29, device="cuda", dtype=torch.float32)  # 2 GiB
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def with_backend(name):
    os.environ["FEDBCS_OPS_BACKEND"] = name


def _fsr_calls(op, args, grad):
    """Forward (no grad), backward (with its untimed setup) and full calls of one op."""
    state = {}

    def forward():
        with torch.no_grad():
            op(*args)

    def backward_setup():
        state["out"] = op(*args)

    def backward():
        state["out"].backward(grad)

    def full():
        op(*args).backward(grad)

    return forward, backward_setup, backward, full


def fsr_rows(copy_gbs):
    rows = []
    for shape in FSR_SHAPES:
        B, C = shape[:2]
        x = torch.randn(shape, device="cuda", requires_grad=True)
        a = torch.rand(B, C, device="cuda", requires_grad=True)
        b = torch.rand(B, C, device="cuda", requires_grad=True)
        w = torch.rand(C, device="cuda", requires_grad=True)
        bias = torch.rand(C, device="cuda", requires_grad=True)
        g = torch.randn(shape, device="cuda")
        for provider in ("triton", "torch", "reference"):
            if provider == "reference" and x.numel() > 2**26:
                continue  # the literal FFT route needs ~20 copies of x; skip the big one
            with_backend("triton" if provider == "triton" else "torch")
            fwd, bwd_setup, bwd, full = _fsr_calls(
                reference.fsr_fft if provider == "reference" else fsr, (x, a, b, w, bias), g
            )
            for mode, ms in (
                ("forward", bench(fwd)),
                ("backward", bench(bwd, bwd_setup)),
                ("full", bench(full)),
            ):
                gbs = FSR_PASSES[mode] * x.numel() * 4 / ms / 1e6
                rows.append(("fsr", shape, mode, provider, ms, gbs, 100 * gbs / copy_gbs))
    return rows


def class_sums_rows(copy_gbs):
    rows = []
    for fshape, lshape in CLASS_SUMS_SHAPES:
        features = torch.randn(fshape, device="cuda")
        labels = torch.randint(0, 2, lshape, device="cuda")
        moved = features.numel() * 4 + labels.numel() * 8
        providers = {
            "floor": lambda f=features: f.sum((2, 3)),
            "triton": lambda f=features, lab=labels: class_sums(f, lab, 2),
            "torch": lambda f=features, lab=labels: class_sums(f, lab, 2),
            "reference": lambda f=features, lab=labels: reference.class_sums(f, lab, 2),
        }
        for provider, fn in providers.items():
            with_backend("triton" if provider == "triton" else "torch")
            ms = bench(fn)
            gbs = moved / ms / 1e6
            rows.append(("class_sums", fshape, "forward", provider, ms, gbs, 100 * gbs / copy_gbs))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    copy_gbs = copy_bandwidth()
    rows = fsr_rows(copy_gbs) + class_sums_rows(copy_gbs)
    base = {(r[0], r[1], r[2]): r[4] for r in rows if r[3] in ("torch",)}
    print(f"\ndevice: {torch.cuda.get_device_name()}  |  D2D copy: {copy_gbs:.0f} GB/s\n")
    print("| op | shape | mode | provider | ms | GB/s | % of copy | torch / this |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for op, shape, mode, provider, ms, gbs, pct in rows:
        speedup = base.get((op, shape, mode), float("nan")) / ms
        shape_s = "x".join(map(str, shape))
        print(
            f"| {op} | {shape_s} | {mode} | {provider} | {ms:.3f} | {gbs:.0f} | {pct:.0f} "
            f"| {speedup:.2f} |"
        )
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_report.json").write_text(json.dumps({"copy_gbs": copy_gbs, "rows": rows}))


if __name__ == "__main__":
    main()

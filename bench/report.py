"""The outputs of a run: the record (JSON), the table printed last (forward sections per dtype, the skipped groups,
backward and decode sections, the ceilings, then the interop line last) and the optional PNG. Pure Python (matplotlib
only for the PNG)."""
import json
import math
import os

from common import INTEROP_TARGET_US


def write_outputs(args, record, rows, managed_interop, c_interop, card):
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)
    table = format_table(rows)
    for g in record.get("skipped_groups") or []:
        table += f"\n{g['pass']} {g['dtype']}: skipped ({g['reason']})"
    if any(r["pass"] == "bwd" for r in rows):
        table += "\n" + format_bwd_table(rows)
    if any(r["pass"] == "decode" for r in rows):
        table += "\n" + format_decode_table(rows)
    ceilings = format_ceilings(rows, record)
    if ceilings:
        table += "\n" + ceilings
    table += "\n" + format_interop(managed_interop, c_interop)
    if args.table:
        with open(args.table, "w") as f:
            f.write(table + "\n")
    if args.png:
        write_png(rows, args.png, card)
    print(f"# wrote {args.out}")
    print(table)


def fmt(x, spec="6.0f"):
    return format(x, spec) if isinstance(x, (int, float)) and x is not None and not math.isnan(x) else "-".rjust(len(format(0, spec)))


def describe_shape(r):
    c = "causal" if r["causal"] else "full"
    if r.get("varlen"):
        return f"d{r['d']} {c} varlen{r['b']} h{r['h']}"
    name = f"d{r['d']} {c} s{r['sq'] // 1024}k" if r["sq"] % 1024 == 0 else f"d{r['d']} {c} s{r['sq']}"
    if r["hkv"] != r["h"]:
        name += f" gqa{r['h']}/{r['hkv']}"
    return name


def has_baseline(rows):
    """Whether the run timed a --baseline-lib (its rows carry ours_base_ms)."""
    return any("ours_base_ms" in r for r in rows)


def baseline_cells(r):
    """The base and ours/base columns (TFLOP/s of the baseline build; ours over base, > 1: ours faster)."""
    o, b = r.get("ours_tflops"), r.get("ours_base_tflops")
    return f"  {fmt(b)}  {fmt(o / b if o and b else None, '9.3f')}"


def errors_cell(r):
    return f"  [{'; '.join(f'{k}: {v}' for k, v in r['errors'].items())}]" if r.get("errors") else ""


def ratio(a, b):
    """a / b where both are positive figures, else None."""
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a > 0 and b > 0 else None


def worst(*xs):
    """The largest of the figures given (None when there is none)."""
    xs = [x for x in xs if isinstance(x, (int, float))]
    return max(xs) if xs else None


# The forward table's columns: (header, format, value of a row). TFLOP/s of ours (default path), ours forced onto
# the sm80 kernels, the managed API, flash and cuDNN; ours over flash, ours and sm80 over cuDNN; ours as a fraction
# of the bf16 matmul rate measured in the same run; the kernel family ours ran; the worst relative error of our two
# paths against the reference.
FWD_COLUMNS = (
    ("ours", "6.0f", lambda r: r.get("ours_tflops")),
    ("sm80", "6.0f", lambda r: r.get("ours_sm80_tflops")),
    ("C#api", "6.0f", lambda r: r.get("managed_tflops")),
    ("flash", "6.0f", lambda r: r.get("flash_tflops")),
    ("cudnn", "6.0f", lambda r: r.get("cudnn_tflops")),
    ("ours/fl", "7.2f", lambda r: ratio(r.get("ours_tflops"), r.get("flash_tflops"))),
    ("ours/cu", "7.2f", lambda r: ratio(r.get("ours_tflops"), r.get("cudnn_tflops"))),
    ("sm80/cu", "7.2f", lambda r: ratio(r.get("ours_sm80_tflops"), r.get("cudnn_tflops"))),
    ("ours/mm", "7.2f", lambda r: ratio(r.get("ours_tflops"), r.get("matmul_tflops"))),
    ("path", "4s", lambda r: r.get("path")),
    ("rel.err", "7.1e", lambda r: worst(r.get("ours_rel_err"), r.get("ours_sm80_rel_err"))),
)
# The e4m3 rows' columns: TFLOP/s of our fp8 forward, of our bf16 forward on the same shape and values, and of flash
# and cuDNN in bf16 (PyTorch has no fp8 attention); ours over our bf16 and over cuDNN; ours as a fraction of the e4m3
# matmul rate of this run (the row's matmul_tflops); the kernel family ours ran; the worse relative error of our two
# forwards against flash's bf16 output.
FP8_COLUMNS = (
    ("ours", "6.0f", lambda r: r.get("ours_tflops")),
    ("bf16", "6.0f", lambda r: r.get("ours_bf16_tflops")),
    ("flash", "6.0f", lambda r: r.get("flash_tflops")),
    ("cudnn", "6.0f", lambda r: r.get("cudnn_tflops")),
    ("ours/bf16", "9.2f", lambda r: ratio(r.get("ours_tflops"), r.get("ours_bf16_tflops"))),
    ("ours/cu", "7.2f", lambda r: ratio(r.get("ours_tflops"), r.get("cudnn_tflops"))),
    ("ours/mm", "7.2f", lambda r: ratio(r.get("ours_tflops"), r.get("matmul_tflops"))),
    ("path", "4s", lambda r: r.get("path")),
    ("rel.err", "7.1e", lambda r: worst(r.get("ours_rel_err"), r.get("ours_bf16_rel_err"))),
)
BASE_COLUMNS = (
    ("base", "6.0f", lambda r: r.get("ours_base_tflops")),
    ("ours/base", "9.3f", lambda r: ratio(r.get("ours_tflops"), r.get("ours_base_tflops"))),
)


def cell(value, spec):
    """One table cell: the value in spec's width ("4s": text), or "-" right-aligned in it."""
    if spec.endswith("s"):
        return (str(value) if value else "-").rjust(int(spec[:-1]))
    return fmt(value, spec)


def format_table(rows):
    """The forward rows, one section per dtype (bf16, fp16, then e4m3), columns as FWD_COLUMNS (e4m3: FP8_COLUMNS; with
    a --baseline-lib, BASE_COLUMNS too), errors and notes last; a legend line under them."""
    fwd = [r for r in rows if r["pass"] == "fwd"]
    base = BASE_COLUMNS if has_baseline(rows) else ()
    dtypes = list(dict.fromkeys(r["dtype"] for r in fwd)) or ["bf16"]
    lines = []
    for dtype in dtypes:
        columns = (FP8_COLUMNS if dtype == "e4m3" else FWD_COLUMNS) + base
        lines.append(f"{dtype} fwd TFLOP/s".ljust(28) + "".join("  " + h.rjust(len(cell(None, spec)))
                                                             for h, spec, _ in columns))
        for r in fwd:
            if r["dtype"] != dtype:
                continue
            lines.append(describe_shape(r).ljust(28) + "".join("  " + cell(get(r), spec) for _, spec, get in columns)
                         + errors_cell(r) + (f"  ({r['note']})" if dtype == "e4m3" and r.get("note") else ""))
    mm = next((r.get("matmul_tflops") for r in fwd if r.get("matmul_tflops") and r["dtype"] != "e4m3"), None)
    lines.append("fwd: ours = default path (FA_PATH_AUTO), sm80 = forced FA_PATH_SM80, path = kernels ours ran; "
                 "ours/mm = ours over the bf16 matmul rate of this run"
                 + (f" ({mm:.0f} TFLOP/s)" if mm else " (not measured)"))
    if "e4m3" in dtypes:
        mm8 = next((r.get("matmul_tflops") for r in fwd if r.get("matmul_tflops") and r["dtype"] == "e4m3"), None)
        lines.append("e4m3 fwd: ours = our fp8 forward (descales of 1), bf16 = our bf16 forward on the same values, "
                     "flash and cudnn = PyTorch SDPA in bf16 (PyTorch has no fp8 attention); ours/mm = ours over the "
                     "e4m3 matmul rate of this run" + (f" ({mm8:.0f} TFLOP/s)" if mm8 else " (not measured)"))
    return "\n".join(lines)


def format_bwd_table(rows):
    """The backward rows: TFLOP/s (2.5x the forward's FLOPs) of ours (default and deterministic mode), flash, cuDNN;
    ratios; det/ours is the deterministic mode's time over the default's; rel.err the worst of dq, dk, dv; with a
    --baseline-lib, the baseline build's default mode and ours over it."""
    base = has_baseline(rows)
    lines = ["bf16 bwd TFLOP/s              ours    det   sm80  flash  cudnn  ours/fl  ours/cu  det/ours  rel.err"
             + ("    base  ours/base" if base else "")]
    for r in rows:
        if r["pass"] != "bwd":
            continue
        name = describe_shape(r).ljust(28)
        o, det, fl, cu = r["ours_tflops"], r.get("ours_det_tflops"), r["flash_tflops"], r["cudnn_tflops"]
        ratio_f = o / fl if o and fl else None
        ratio_c = o / cu if o and cu else None
        lines.append(f"{name} {fmt(o)} {fmt(det)} {fmt(r.get('ours_sm80_tflops'))} {fmt(fl)} {fmt(cu)}  {fmt(ratio_f, '7.2f')}  {fmt(ratio_c, '7.2f')}  "
                     f"{fmt(r.get('det_ratio'), '8.2f')}  {fmt(r['ours_rel_err'], '7.1e')}"
                     + (baseline_cells(r) if base else "") + errors_cell(r))
    return "\n".join(lines)


def describe_decode(r):
    """A decode row's name from whichever of TARGETS.md's fields bench/decode.py filled in."""
    parts = [f"d{r.get('d', '?')}", f"b{r.get('b', '?')}", f"h{r.get('h', '?')}/{r.get('hkv', r.get('h', '?'))}"]
    sk = r.get("sk")
    if isinstance(sk, int):
        parts.append(f"sk{sk // 1024}k" if sk % 1024 == 0 else f"sk{sk}")
    if isinstance(r.get("sq"), int) and r["sq"] != 1:
        parts.append(f"q{r['sq']}")
    if r.get("paged_block"):
        parts.append(f"paged{r['paged_block']}")
    if r.get("serving"):
        parts.append(f"+{r['serving']}")
    if r.get("kv_cache_dtype"):  # an fp8 cache (C ABI 0.13): its bf16/fp8 ratio beside the name
        parts.append(f"kv-{r['kv_cache_dtype']}")
    return "decode " + " ".join(parts)


def format_decode_table(rows):
    """The decode rows (bench/decode.py): times in microseconds, K/V bandwidth in TB/s, ours over flash's time."""
    base = any("ours_base_ms" in r for r in rows if r["pass"] == "decode")
    lines = ["bf16 decode                   ours_us  flash_us  cudnn_us  ours TB/s  copy TB/s  fl/ours"
             + ("   base_us  base/ours" if base else "")]
    for r in rows:
        if r["pass"] != "decode":
            continue
        us = {k: (r.get(f"{k}_ms") * 1e3 if isinstance(r.get(f"{k}_ms"), (int, float)) else None) for k in ("ours", "flash", "cudnn")}
        speed = us["flash"] / us["ours"] if us["ours"] and us["flash"] else None
        errs = r.get("errors")
        lines.append(f"{describe_decode(r)[:28].ljust(28)} {fmt(us['ours'], '8.1f')}  {fmt(us['flash'], '8.1f')}  "
                     f"{fmt(us['cudnn'], '8.1f')}  {fmt(r.get('ours_tbps'), '9.2f')}  {fmt(r.get('copy_tbps'), '9.2f')}  "
                     f"{fmt(speed, '7.2f')}"
                     + (f"  {fmt(r.get('ours_base_ms') and r['ours_base_ms'] * 1e3, '8.1f')}  "
                        f"{fmt(r.get('ours_base_ms') and us['ours'] and r['ours_base_ms'] * 1e3 / us['ours'], '9.3f')}"
                        if base else "")
                     + (f"  bf16/fp8 {fmt(r.get('fp8_speedup'), '.2f')}x" if r.get("kv_cache_dtype") else "")
                     + (f"  [{'; '.join(f'{k}: {v}' for k, v in errs.items())}]" if errs else ""))
    return "\n".join(lines)


def format_ceilings(rows, record=None):
    """The ceiling lines: each matmul row's TFLOP/s (or why it is missing); from the record's matmul_tflops when the
    rows have none (a record written before the matmul rows)."""
    parts = []
    for r in rows:
        if r.get("pass") != "matmul":
            continue
        how = r.get("op") + (", unit scales, bf16 out" if r["dtype"] == "e4m3" else "")
        what = f"{r['dtype']} matmul {r['n']}^3 ({how})"
        if r.get("matmul_tflops"):
            parts.append(f"{what} {r['matmul_tflops']:.0f} TFLOP/s")
        else:
            why = "; ".join(f"{v}" for v in (r.get("errors") or {}).values()) or "not measured"
            parts.append(f"{what} - [{why}]")
    if not parts and record and record.get("matmul_tflops"):
        parts.append(f"bf16 matmul 8192^3 {record['matmul_tflops']:.0f} TFLOP/s (cuBLAS through torch)")
    return "\n".join(f"ceiling (same run): {p}" for p in parts)


def format_interop(managed, c):
    m_us = managed.get("call_us") if managed else None
    c_us = c.get("call_us") if c else None
    line = (f"interop (host us per Forward call, b1 s128 h1 d64, median): C#api {fmt(m_us, '.2f')}, "
            f"C {fmt(c_us, '.2f')}")
    if m_us is not None and c_us is not None:
        diff = m_us - c_us
        line += f", difference {diff:+.2f} (target <= {INTEROP_TARGET_US:.0f}: {'met' if diff <= INTEROP_TARGET_US else 'NOT met'})"
    return line


def write_png(rows, path, card):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("# matplotlib not available; no chart")
        return
    fwd = [r for r in rows if r["pass"] == "fwd"]
    panels = [(f"{dtype} forward", [r for r in fwd if r["dtype"] == dtype],
               [("ours", "ours_tflops"), ("ours bf16", "ours_bf16_tflops"), ("flash bf16", "flash_tflops"),
                ("cudnn bf16", "cudnn_tflops")] if dtype == "e4m3" else
               [("ours", "ours_tflops"), ("ours sm80", "ours_sm80_tflops"), ("flash", "flash_tflops"),
                ("cudnn", "cudnn_tflops")])
              for dtype in dict.fromkeys(r["dtype"] for r in fwd)]
    panels.append(("bf16 backward", [r for r in rows if r["pass"] == "bwd"],
                   [("ours", "ours_tflops"), ("ours deterministic", "ours_det_tflops"), ("flash", "flash_tflops"),
                    ("cudnn", "cudnn_tflops")]))
    panels = [pn for pn in panels if pn[1]]
    if not panels:
        print("# no forward or backward rows; no chart")
        return
    n = max(len(pn[1]) for pn in panels)
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(12, 0.7 * n), 5 * len(panels)), squeeze=False)
    for ax, (what, prow, series) in zip(axes[:, 0], panels):
        width = 0.8 / len(series)
        for i, (name, key) in enumerate(series):
            offset = (i - (len(series) - 1) / 2) * width
            ax.bar([x + offset for x in range(len(prow))], [r.get(key) or 0 for r in prow], width, label=name)
        ax.set_xticks(range(len(prow)))
        ax.set_xticklabels([describe_shape(r) for r in prow], rotation=40, ha="right", fontsize=8)
        ax.set_ylabel(f"TFLOP/s ({what})")
        ax.set_title(f"FlashAttention.Interop vs PyTorch SDPA, {what} - {card}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"# wrote {path}")

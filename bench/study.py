"""The opening and the record of a one-feature study (dropout.py, vdim.py, paged.py): the same flags, the same first
lines, the same record fields. Its own module, above common.py, ceilings.py and run.py (which it uses), so that
common.py imports neither. torch is imported when a study starts, not at import."""
import datetime
import json

from ceilings import ceiling_rows
from common import FaLib, Timer
from run import git_commit


def study_start(description, quick_help):
    """The command line and opening of a one-feature study: --lib, --out, --quick (quick_help says what it keeps),
    --commit; then the library opened, the Timer, a line naming torch, the card and the library, and the bf16
    matmul ceiling rows measured in the same process. Returns (args, FaLib, Timer, ceiling rows)."""
    import argparse
    import torch
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--lib", required=True)
    ap.add_argument("--out")
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--commit", default=None, help="the commit measured (default: git's HEAD here, as run.py)")
    args = ap.parse_args()
    fa = FaLib(args.lib).open()
    bench = Timer(25, 100)
    print(f"# torch {torch.__version__} {torch.cuda.get_device_name()} library {fa.version():#x}", flush=True)
    return args, fa, bench, ceiling_rows(bench, ("bf16",))


def write_study_record(args, rows, **extra):
    """A study's record at args.out (when given): card, date, commit (run.py's git_commit of --commit), the extra
    fields, the rows (ceilings first)."""
    if not args.out:
        return
    import torch
    record = {"card": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
              "commit": git_commit(args.commit), **extra, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(record, f, indent=1)

#!/usr/bin/env python3
"""compute-sanitizer (memcheck, racecheck, synccheck, initcheck) over every kernel family: gpu-test's sanitize step.

Runs native/tests/sanitize_driver (built with the ctest programs) first without a tool, then under each sanitizer
tool, split into shards (the driver's --shard K/N) that run side by side, each under a time limit, and reads the
logs:
  - the sanitizer's verdict ("ERROR SUMMARY: N errors"; racecheck's "RACECHECK SUMMARY: H hazards displayed (E
    errors, W warnings)"); no verdict (the run was killed, the tool refused the device, ...) is a failure too;
  - the driver's own lines: which calls began and ended (SAN-CALL i BEGIN/END), the kernels the library named for
    each, failed statuses, and in the plain run whether every compiled kernel the device serves ran (SAN-COVERAGE);
  - each sanitizer record (an out-of-bounds access, a race, a barrier error, an uninitialised read) is attributed
    to the call whose BEGIN line came last before it, with the kernel the record names. Then up to --confirm calls
    per tool with errors are run again alone (--only i), so that the summary can say which call reproduces them.

Prints one status line per tool (calls run, kernel launches the library named, distinct kernels, errors) and the
calls with errors; writes them to --summary as "passed=P failed=F skipped=S" followed by the status lines (gpu-test
adds them to its summary), and everything to --json. Exit code 0 when every tool reported 0 errors on every call.

Usage: run_sanitizers.py --driver build/native/sanitize_driver [--logdir DIR] [--tools memcheck,racecheck,...]
           [--shards racecheck=4,memcheck=2] [--jobs N] [--timeout S] [--confirm N] [--confirm-timeout S]
           [--sanitizer PATH] [--summary FILE] [--json FILE]
       run_sanitizers.py --self-test   (the parsing, attribution and process handling on canned logs and fake
                                        programs; no GPU, no compute-sanitizer; ctest sanitize_parser)
"""
import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TOOLS = ("memcheck", "racecheck", "synccheck", "initcheck")
# racecheck is by far the slowest tool (every shared-memory access is tracked): it gets the most shards.
DEFAULT_SHARDS = {"memcheck": 2, "racecheck": 6, "synccheck": 2, "initcheck": 2}
PREFIX = "========="

BEGIN_RE = re.compile(r"^SAN-CALL (\d+) BEGIN (.*)$")
END_OK_RE = re.compile(r"^SAN-CALL (\d+) END ok ([0-9.]+) ms kernels=(.*)$")
END_FAIL_RE = re.compile(r"^SAN-CALL (\d+) END FAIL (.*)$")
PLANNED_RE = re.compile(r"^SAN-DRIVER: (\d+) calls planned .*; running (\d+)")
ERROR_SUMMARY_RE = re.compile(r"ERROR SUMMARY: (\d+) errors?\b(?! (?:were|was) not printed)")
NOT_PRINTED_RE = re.compile(r"ERROR SUMMARY: (\d+) errors? (?:were|was) not printed")
RACECHECK_SUMMARY_RE = re.compile(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)")
# Top-level sanitizer lines that are not the start of an error record.
NOT_A_RECORD_RE = re.compile(
    r"^(COMPUTE-SANITIZER|ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY|Target application returned|"
    r"Saved host backtrace|Host Frame|Device Frame|and |\(|\[|Note:|No .* found|Program exited)")


# ---- parsing ------------------------------------------------------------------------------------------------------

def kernel_in(text):
    """The kernel a sanitizer record names: the first function whose name contains 'kernel' (else the first function
    name), with its template arguments (balanced <...>, which may hold parentheses), or ''."""
    best = None
    for m in re.finditer(r"[A-Za-z_][\w:]*", text):
        name, end = m.group(0), m.end()
        nxt = text[end:end + 3]
        if not (nxt.startswith("<") or nxt.startswith("(") or nxt.startswith("+0x")):
            continue
        if name in ("at", "in", "by", "void", "thread", "block", "access", "Write", "Read", "and"):
            continue
        if nxt.startswith("<"):
            depth, j = 0, end
            while j < len(text):
                if text[j] == "<":
                    depth += 1
                elif text[j] == ">":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            name = text[m.start():j + 1]
        if "kernel" in m.group(0).lower():
            return name
        if best is None:
            best = name
    return best or ""


def parse_log(text):
    """Reads one log (driver lines and sanitizer lines interleaved) into a dict; see the module docstring."""
    r = {
        "calls": {},          # index -> {"label", "ended", "ok", "ms", "kernels", "fail"}
        "order": [],          # call indices in the order they began
        "planned": None, "running": None, "done": None, "skip": None, "abort": None, "device": None,
        "coverage": None, "uncovered": [], "notes": [], "driver_fail": [],
        "errors": None, "not_printed": 0, "hazards": None, "warnings": 0, "racecheck": False,
        "records": [],        # {"severity", "head", "call", "kernel"}
        "last_lines": [],
    }
    current = None
    record = None
    san_lines = []

    def close_record():
        nonlocal record
        if record is not None:
            record["kernel"] = kernel_in(" ".join(record.pop("text")))
            r["records"].append(record)
            record = None

    for raw in text.splitlines():
        line = raw.rstrip("\r\n")
        if line.strip():
            r["last_lines"] = (r["last_lines"] + [line.strip()])[-6:]
        if line.startswith(PREFIX):
            content = line[len(PREFIX):]
            san_lines.append(content.strip())
            if not content.strip():
                close_record()
                continue
            if content.startswith(" ") and not content.startswith("  "):
                head = content.strip()
                if NOT_A_RECORD_RE.match(head):
                    if record is not None and head.startswith(("and ", "Device Frame", "(", "[")):
                        record["text"].append(head)
                    continue
                close_record()
                record = {"severity": "warning" if head.lower().startswith("warning") else "error",
                          "head": head, "call": current, "text": [head]}
            elif record is not None:
                record["text"].append(content.strip())
            continue
        close_record()
        m = BEGIN_RE.match(line)
        if m:
            current = int(m.group(1))
            r["calls"][current] = {"label": m.group(2), "ended": False, "ok": False, "ms": None, "kernels": [],
                                   "fail": None}
            r["order"].append(current)
            continue
        m = END_OK_RE.match(line)
        if m:
            c = r["calls"].setdefault(int(m.group(1)), {"label": "?", "kernels": [], "fail": None})
            c.update(ended=True, ok=True, ms=float(m.group(2)),
                     kernels=[k for k in m.group(3).split(",") if k and k != "(none)"])
            continue
        m = END_FAIL_RE.match(line)
        if m:
            c = r["calls"].setdefault(int(m.group(1)), {"label": "?", "kernels": [], "ms": None})
            c.update(ended=True, ok=False, fail=m.group(2))
            continue
        m = PLANNED_RE.match(line)
        if m:
            r["planned"], r["running"] = int(m.group(1)), int(m.group(2))
            continue
        if line.startswith("SAN-DRIVER: device "):
            r["device"] = "device " + line[len("SAN-DRIVER: device "):].split(";")[0]
        elif line.startswith("SAN-DRIVER FAIL"):
            r["driver_fail"].append(line)
        elif line.startswith("SAN-DONE "):
            r["done"] = int(line.split()[1])
        elif line.startswith("SAN-SKIP "):
            r["skip"] = line[len("SAN-SKIP "):]
        elif line.startswith("SAN-ABORT "):
            r["abort"] = line[len("SAN-ABORT "):]
        elif line.startswith("SAN-COVERAGE: "):
            r["coverage"] = line[len("SAN-COVERAGE: "):]
        elif line.startswith("SAN-UNCOVERED "):
            r["uncovered"].append(line[len("SAN-UNCOVERED "):])
        elif line.startswith("SAN-NOTE "):
            r["notes"].append(line[len("SAN-NOTE "):])
    close_record()

    # Verdicts: per line for ERROR SUMMARY, over the joined lines for racecheck's (it may wrap).
    for content in san_lines:
        m = NOT_PRINTED_RE.search(content)
        if m:
            r["not_printed"] = int(m.group(1))
            continue
        m = ERROR_SUMMARY_RE.search(content)
        if m:
            r["errors"] = max(r["errors"] or 0, int(m.group(1)))
    m = RACECHECK_SUMMARY_RE.search(" ".join(san_lines))
    if m:
        r["racecheck"] = True
        r["hazards"] = int(m.group(1))
        r["errors"] = max(r["errors"] or 0, int(m.group(2)))
        r["warnings"] = int(m.group(3))
    return r


# ---- processes ----------------------------------------------------------------------------------------------------

class Job:
    def __init__(self, name, cmd, log, timeout, env=None):
        self.name, self.cmd, self.log, self.timeout, self.env = name, cmd, log, timeout, env
        self.proc = None
        self.start = None
        self.seconds = None
        self.rc = None
        self.timed_out = False
        self.fh = None

    def launch(self):
        self.fh = open(self.log, "w")
        self.fh.write("# " + " ".join(self.cmd) + "\n")
        self.fh.flush()
        self.start = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.cmd, stdout=self.fh, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True)
        except OSError as e:
            self.fh.write("could not start: %s\n" % e)
            self.fh.close()
            self.rc, self.seconds = 127, 0.0

    def poll(self):
        """True once finished (killing it at its time limit)."""
        if self.rc is not None:
            return True
        rc = self.proc.poll()
        if rc is None and time.monotonic() - self.start > self.timeout:
            self.timed_out = True
            kill_group(self.proc)
            rc = self.proc.wait()
        if rc is None:
            return False
        self.rc = rc
        self.seconds = time.monotonic() - self.start
        if self.timed_out:
            self.fh.write("\n# run_sanitizers: killed after %d s (time limit)\n" % self.timeout)
        self.fh.close()
        return True


def kill_group(proc):
    """Ends the process group this script started for one run (the sanitizer and the driver under it)."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            pass


def run_jobs(jobs, max_parallel):
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < max_parallel:
            job = pending.pop(0)
            job.launch()
            running.append(job)
        running = [j for j in running if not j.poll()]
        if running:
            time.sleep(0.2)


def find_sanitizer(given):
    if given:
        return given if os.path.isfile(given) and os.access(given, os.X_OK) else None
    cands = [os.environ.get("FA_COMPUTE_SANITIZER", ""), shutil.which("compute-sanitizer") or ""]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.join(os.path.dirname(os.path.realpath(nvcc)), "compute-sanitizer"))
    for home in (os.environ.get("CUDA_HOME", ""), os.environ.get("CUDA_PATH", ""), "/usr/local/cuda"):
        if home:
            cands += [os.path.join(home, "bin", "compute-sanitizer"),
                      os.path.join(home, "compute-sanitizer", "compute-sanitizer")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


def sanitizer_options(sanitizer):
    """The options of the installed compute-sanitizer that we use, each only when its --help lists it."""
    try:
        text = subprocess.run([sanitizer, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=60).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.SubprocessError):
        text = ""
    return {opt for opt in ("--print-limit", "--check-exit-code", "--show-backtrace", "--launch-timeout", "--port",
                            "--max-connections", "--padding", "--track-stream-ordered-races")
            if re.search(r"(^|\s)" + re.escape(opt) + r"\b", text)}


def sanitizer_cmd(sanitizer, opts, tool, slot, driver_args):
    cmd = [sanitizer, "--tool", tool]
    if "--print-limit" in opts:
        cmd += ["--print-limit", "200"]
    if "--check-exit-code" in opts:
        cmd += ["--check-exit-code", "no"]  # the driver's exit code is read separately, not counted as an error
    if "--show-backtrace" in opts:
        cmd += ["--show-backtrace", "device"]
    if "--launch-timeout" in opts:
        cmd += ["--launch-timeout", "120"]  # many sanitizers start at once on a busy machine
    if "--port" in opts and "--max-connections" in opts:
        cmd += ["--port", str(49152 + 16 * slot), "--max-connections", "16"]  # side by side: no shared ports
    if tool == "memcheck":
        if "--padding" in opts:
            cmd += ["--padding", "256"]  # out-of-bounds accesses that would land in a neighbouring allocation
        if "--track-stream-ordered-races" in opts:
            cmd += ["--track-stream-ordered-races", "all"]  # the library's cudaMallocAsync workspaces
    return cmd + driver_args


# ---- the report ---------------------------------------------------------------------------------------------------

def short(text, n):
    return text if len(text) <= n else text[:n - 3] + "..."


def aggregate(tool, jobs, parsed, planned):
    """One tool's shards together."""
    t = {"tool": tool, "shards": len(jobs), "seconds": max((j.seconds or 0.0) for j in jobs),
         "calls_run": 0, "calls_failed": [], "launches": 0, "kernels": set(), "errors": 0, "warnings": 0,
         "no_verdict": [], "timed_out": [], "aborted": [], "unfinished": [], "records_by_call": {}, "slowest": [],
         "not_printed": 0}
    for job, p in zip(jobs, parsed):
        for idx, c in p["calls"].items():
            if c.get("ended"):
                t["calls_run"] += 1
                if c.get("ok"):
                    t["launches"] += len(c["kernels"])
                    t["kernels"].update(c["kernels"])
                    t["slowest"].append((c["ms"] or 0.0, idx))
                else:
                    t["calls_failed"].append((idx, c.get("fail") or "?"))
        if job.timed_out:
            began = [i for i in p["order"] if not p["calls"][i].get("ended")]
            t["timed_out"].append((job.name, began[0] if began else None, len(p["order"])))
        elif p["errors"] is None:
            t["no_verdict"].append((job.name, job.rc, p["last_lines"][-1] if p["last_lines"] else "no output"))
        if p["errors"] is not None:
            t["errors"] += p["errors"]
        t["warnings"] += p["warnings"]
        t["not_printed"] += p["not_printed"]
        if p["abort"]:
            t["aborted"].append(p["abort"])
        if not job.timed_out and p["done"] is None:
            t["unfinished"].append((job.name, job.rc))
        for rec in p["records"]:
            key = rec["call"] if rec["call"] is not None else -1
            slot = t["records_by_call"].setdefault(key, {"errors": 0, "warnings": 0, "kernels": [], "heads": []})
            slot["errors" if rec["severity"] == "error" else "warnings"] += 1
            if rec["kernel"] and rec["kernel"] not in slot["kernels"]:
                slot["kernels"].append(rec["kernel"])
            head = short(rec["head"].split(" at ")[0], 90)  # the kind of record; the kernel is listed apart
            if head not in slot["heads"]:
                slot["heads"].append(head)
    t["slowest"].sort(reverse=True)
    t["planned"] = planned
    t["clean"] = (not t["timed_out"] and not t["no_verdict"] and not t["unfinished"] and not t["calls_failed"] and
                  not t["aborted"] and t["errors"] == 0)
    return t


def tool_lines(t, labels, confirmed, max_calls=12):
    tool = t["tool"]
    runs = "%d of %s calls run (%d kernel launches named by the library, %d distinct kernels)" % (
        t["calls_run"], t["planned"] if t["planned"] is not None else "?", t["launches"], len(t["kernels"]))
    verdict = "%d errors" % t["errors"]
    if tool == "racecheck" or t["warnings"]:
        verdict += ", %d warnings" % t["warnings"]
    lines = ["sanitize %s: %s, %s [%.0f s, %d shard%s]%s" % (
        tool, runs, verdict, t["seconds"], t["shards"], "" if t["shards"] == 1 else "s",
        "" if t["clean"] else ": FAILED")]
    for name, at, began in t["timed_out"]:
        lines.append("sanitize %s: %s timed out (at call %s; %d calls begun): FAILED" % (
            tool, name, at if at is not None else "?", began))
    for name, rc, last in t["no_verdict"]:
        lines.append("sanitize %s: %s ended (exit code %s) without a sanitizer summary; last line: %s" % (
            tool, name, rc, short(last, 140)))
    for name, rc in t["unfinished"]:
        if not any(n == name for n, _, _ in t["no_verdict"]):
            lines.append("sanitize %s: %s: the driver did not finish (exit code %s)" % (tool, name, rc))
    for a in t["aborted"]:
        lines.append("sanitize %s: %s" % (tool, short(a, 160)))
    for idx, why in t["calls_failed"][:max_calls]:
        lines.append("sanitize %s: call %d failed: %s [%s]" % (tool, idx, short(why, 120),
                                                               short(labels.get(idx, "?"), 120)))
    calls = sorted(t["records_by_call"].items(), key=lambda kv: (-kv[1]["errors"], -kv[1]["warnings"], kv[0]))
    for n, (idx, slot) in enumerate(calls):
        if n == max_calls:
            lines.append("sanitize %s: ... and %d more calls with records (see san-%s-*.log)" % (
                tool, len(calls) - max_calls, tool))
            break
        where = "outside any call" if idx < 0 else "call %d (%s)" % (idx, short(labels.get(idx, "?"), 110))
        conf = confirmed.get((tool, idx))
        conf_text = "" if conf is None else (" [alone: %d errors]" % conf if conf >= 0 else " [alone: no verdict]")
        lines.append("sanitize %s: %s: %d error and %d warning records%s (%s) in %s" % (
            tool, where, slot["errors"], slot["warnings"], conf_text, short("; ".join(slot["heads"]), 120),
            short(", ".join(slot["kernels"]) or "an unnamed kernel", 200)))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--driver", help="the sanitize_driver executable")
    ap.add_argument("--sanitizer", help="compute-sanitizer (default: PATH, next to nvcc, /usr/local/cuda/bin)")
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--shards", default="", help="per tool, e.g. racecheck=4,memcheck=2 (defaults: %s)" %
                    ",".join("%s=%d" % kv for kv in DEFAULT_SHARDS.items()))
    ap.add_argument("--jobs", type=int, default=0, help="sanitizer runs at once (default: all shards)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds each sanitizer run may take (default 300)")
    ap.add_argument("--plain-timeout", type=float, default=120, help="seconds the run without a tool may take")
    ap.add_argument("--confirm", type=int, default=3, help="calls with errors re-run alone, per tool (default 3)")
    ap.add_argument("--confirm-timeout", type=float, default=90)
    ap.add_argument("--logdir", default="build/sanitize")
    ap.add_argument("--summary", help="file for the counts and status lines (default LOGDIR/sanitize-summary.txt)")
    ap.add_argument("--json", help="file for everything (default LOGDIR/sanitize.json)")
    ap.add_argument("--handover", help="native/tests/racecheck_handover, run under racecheck in its three modes: the "
                    "positive control (a real race must be reported, a bar.sync hand-over must not; issue 17)")
    ap.add_argument("--self-test", action="store_true")
    a = ap.parse_args(argv)
    if a.self_test:
        return self_test()
    if not a.driver:
        ap.error("--driver is required")
    os.makedirs(a.logdir, exist_ok=True)
    summary_path = a.summary or os.path.join(a.logdir, "sanitize-summary.txt")
    json_path = a.json or os.path.join(a.logdir, "sanitize.json")
    tools = [t for t in a.tools.split(",") if t]
    for t in tools:
        if t not in TOOLS:
            ap.error("unknown tool '%s' (expected %s)" % (t, ", ".join(TOOLS)))
    shards = dict(DEFAULT_SHARDS)
    for item in filter(None, a.shards.split(",")):
        k, _, v = item.partition("=")
        if k not in TOOLS or not v.isdigit() or int(v) < 1:
            ap.error("bad --shards item '%s'" % item)
        shards[k] = int(v)
    env = dict(os.environ)
    env.setdefault("CUDA_MODULE_LOADING", "LAZY")  # only the kernels a run launches are loaded (and instrumented)

    passed = failed = skipped = 0
    lines = []
    report = {"tools": {}, "plain": None}

    def finish():
        with open(summary_path, "w") as f:
            f.write("passed=%d failed=%d skipped=%d\n" % (passed, failed, skipped))
            for line in lines:
                f.write(line + "\n")
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1, default=lambda o: sorted(o) if isinstance(o, set) else str(o))
        print("==> sanitize summary (logs in %s)" % a.logdir)
        for line in lines:
            print("    " + line)
        print("%d passed, %d failed, %d skipped" % (passed, failed, skipped))
        return 0 if failed == 0 else 1

    if not (os.path.isfile(a.driver) and os.access(a.driver, os.X_OK)):
        lines.append("sanitize: %s not found (build the native tests: FA_BUILD_TESTS=ON): FAILED" % a.driver)
        failed += 1
        return finish()

    # 1. Without a tool: the call list, every status, and the coverage of the compiled kernels.
    plain_job = Job("plain", [a.driver], os.path.join(a.logdir, "san-plain.log"), a.plain_timeout, env)
    run_jobs([plain_job], 1)
    with open(plain_job.log, errors="replace") as f:
        plain = parse_log(f.read())
    report["plain"] = {k: v for k, v in plain.items() if k != "records"}
    report["plain"].update(rc=plain_job.rc, seconds=plain_job.seconds, timed_out=plain_job.timed_out)
    if plain_job.rc == 77 or plain["skip"]:
        lines.append("sanitize: skipped (%s)" % (plain["skip"] or "no CUDA device"))
        skipped += 1
        return finish()
    labels = {i: c["label"] for i, c in plain["calls"].items()}
    n_ok = sum(1 for c in plain["calls"].values() if c.get("ok"))
    n_fail = sum(1 for c in plain["calls"].values() if c.get("ended") and not c.get("ok"))
    plain_ok = plain_job.rc == 0 and plain["done"] == 0 and not plain_job.timed_out
    lines.append("sanitize: %s; %s calls planned; without a tool: %d ok, %d failed, coverage %s [%.0f s]%s" % (
        plain["device"] or "device ?", plain["planned"] if plain["planned"] is not None else "?", n_ok, n_fail,
        plain["coverage"] or "not reported", plain_job.seconds or 0.0,
        "" if plain_ok else ": FAILED (exit code %s%s)" % (plain_job.rc, ", timed out" if plain_job.timed_out else "")))
    for idx in sorted(i for i, c in plain["calls"].items() if c.get("ended") and not c.get("ok"))[:12]:
        lines.append("sanitize: without a tool, call %d failed: %s [%s]" % (
            idx, short(plain["calls"][idx]["fail"] or "?", 120), short(labels.get(idx, "?"), 120)))
    for u in plain["uncovered"][:12]:
        lines.append("sanitize: never ran: %s" % u)
    for line in plain["driver_fail"] + ([plain["abort"]] if plain["abort"] else []):
        lines.append("sanitize: %s" % short(line, 200))
    if plain_ok:
        passed += 1
    else:
        failed += 1
    if not plain["calls"]:
        lines.append("sanitize: the driver ran no call; no sanitizer run (see %s)" % plain_job.log)
        failed += 0 if not plain_ok else 1
        return finish()

    # 2. Under each tool, shards side by side.
    sanitizer = find_sanitizer(a.sanitizer)
    if sanitizer is None:
        lines.append("sanitize: compute-sanitizer not found (PATH, next to nvcc, $CUDA_HOME/bin, /usr/local/cuda/bin): "
                     "FAILED")
        failed += 1
        return finish()
    opts = sanitizer_options(sanitizer)
    jobs_by_tool, slot = {}, 0
    for tool in tools:
        n = shards[tool]
        jobs_by_tool[tool] = []
        for k in range(n):
            args = [a.driver] + (["--shard", "%d/%d" % (k, n)] if n > 1 else [])
            name = "%s shard %d/%d" % (tool, k, n) if n > 1 else tool
            log = os.path.join(a.logdir, "san-%s-%d.log" % (tool, k))
            jobs_by_tool[tool].append(Job(name, sanitizer_cmd(sanitizer, opts, tool, slot, args), log, a.timeout, env))
            slot += 1
    all_jobs = [j for js in jobs_by_tool.values() for j in js]
    t0 = time.monotonic()
    print("==> sanitize: %d runs of %s (%s), at most %d at once, %d s each at most" % (
        len(all_jobs), sanitizer, ", ".join("%s x%d" % (t, shards[t]) for t in tools),
        a.jobs or len(all_jobs), a.timeout), flush=True)
    run_jobs(all_jobs, a.jobs or len(all_jobs))
    print("    all runs ended after %.0f s" % (time.monotonic() - t0), flush=True)

    results = {}
    for tool in tools:
        parsed = []
        for j in jobs_by_tool[tool]:
            with open(j.log, errors="replace") as f:
                parsed.append(parse_log(f.read()))
        results[tool] = aggregate(tool, jobs_by_tool[tool], parsed, plain["planned"])

    # 3. The calls with error records, alone, under the same tool.
    confirmed, confirm_jobs = {}, []
    for tool in tools:
        calls = sorted(((k, v) for k, v in results[tool]["records_by_call"].items() if k >= 0 and v["errors"]),
                       key=lambda kv: -kv[1]["errors"])[:max(0, a.confirm)]
        for idx, _ in calls:
            log = os.path.join(a.logdir, "san-%s-call%d.log" % (tool, idx))
            job = Job("%s call %d" % (tool, idx), sanitizer_cmd(sanitizer, opts, tool, slot, [a.driver, "--only",
                                                                                                str(idx)]),
                      log, a.confirm_timeout, env)
            job.key = (tool, idx)
            confirm_jobs.append(job)
            slot += 1
    if confirm_jobs:
        print("==> sanitize: %d calls with errors again, each alone" % len(confirm_jobs), flush=True)
        run_jobs(confirm_jobs, a.jobs or len(confirm_jobs))
        for job in confirm_jobs:
            with open(job.log, errors="replace") as f:
                p = parse_log(f.read())
            confirmed[job.key] = p["errors"] if p["errors"] is not None and not job.timed_out else -1

    if a.handover and "racecheck" in tools:
        ok, hand_lines, report["handover"] = handover_proof(a.handover, sanitizer, opts, slot, a.logdir, env)
        lines.extend(hand_lines)
        if ok:
            passed += 1
        else:
            failed += 1

    for tool in tools:
        t = results[tool]
        lines.extend(tool_lines(t, labels, confirmed))
        if t["clean"]:
            passed += 1
        else:
            failed += 1
        print("    %s: slowest calls %s" % (tool, ", ".join("%d (%.1f s)" % (i, ms / 1e3) for ms, i in t["slowest"][:5])))
        t = dict(t)
        t["records_by_call"] = {str(k): v for k, v in t["records_by_call"].items()}
        t["confirmed"] = {str(k[1]): v for k, v in confirmed.items() if k[0] == tool}
        t["runs"] = [{"name": j.name, "cmd": j.cmd, "log": j.log, "rc": j.rc, "seconds": j.seconds,
                      "timed_out": j.timed_out} for j in jobs_by_tool[tool]]
        report["tools"][tool] = t
    return finish()


# ---- the racecheck control ---------------------------------------------------------------------------------------

HANDOVER_MODES = ("none", "sync", "arrive")


def handover_verdict(counts):
    """counts: mode -> (racecheck errors or None, program exit code, timed out). The control passes when the real
    race (none) is reported, the bar.sync hand-over is clean, and both correct modes read what was written (exit 0);
    what racecheck says of the bar.arrive hand-over is reported, not judged (a correct pattern by the PTX ISA)."""
    problems = []
    none_err, _, none_to = counts["none"]
    if none_to or none_err is None:
        problems.append("no racecheck verdict on the real race")
    elif none_err == 0:
        problems.append("racecheck reported nothing on a real race")
    for mode in ("sync", "arrive"):
        err, rc, to = counts[mode]
        if to or err is None:
            problems.append("no racecheck verdict on the %s hand-over" % mode)
        elif rc != 0:
            problems.append("the %s hand-over read wrong data (exit code %s)" % (mode, rc))
    if counts["sync"][0]:
        problems.append("racecheck reported %d errors on the bar.sync hand-over" % counts["sync"][0])
    return problems


def handover_proof(program, sanitizer, opts, slot, logdir, env):
    jobs = []
    for i, mode in enumerate(HANDOVER_MODES):
        cmd = sanitizer_cmd(sanitizer, opts, "racecheck", slot + i, [program, mode])
        jobs.append(Job("racecheck handover %s" % mode, cmd, os.path.join(logdir, "san-handover-%s.log" % mode),
                        120, env))
    run_jobs(jobs, len(jobs))
    counts = {}
    for mode, j in zip(HANDOVER_MODES, jobs):
        with open(j.log, errors="replace") as f:
            counts[mode] = (parse_log(f.read())["errors"], j.rc, j.timed_out)
    problems = handover_verdict(counts)

    def n(mode):
        return "?" if counts[mode][0] is None else str(counts[mode][0])
    line = ("racecheck control (native/tests/racecheck_handover): real race %s errors, bar.sync hand-over %s, "
            "bar.arrive/bar.sync hand-over %s" % (n("none"), n("sync"), n("arrive")))
    lines = [line + (": FAILED (%s)" % "; ".join(problems) if problems else ": ok")]
    return not problems, lines, {m: {"errors": c[0], "rc": c[1], "timed_out": c[2]} for m, c in counts.items()}


# ---- self-test ----------------------------------------------------------------------------------------------------

FAKE_DRIVER = r'''
import os, sys, time
n = 6
args = sys.argv[1:]
sel = list(range(n))
if "--shard" in args:
    k, m = map(int, args[args.index("--shard") + 1].split("/"))
    sel = [i for i in sel if i % m == k]
if "--only" in args:
    sel = [int(args[args.index("--only") + 1])]
print("SAN-DRIVER: device 0 Fake GPU, compute capability 9.0; libflash_attention 400", flush=True)
print("SAN-DRIVER: %d calls planned (fwd 2, bwd 2, decode 2), 6 targeted kernels; running %d" % (n, len(sel)), flush=True)
failed = 0
for i in sel:
    print("SAN-CALL %d BEGIN %s call %d" % (i, ["fwd", "fwd", "bwd", "bwd", "decode", "decode"][i], i), flush=True)
    if os.environ.get("FAKE_TOOL") == "synccheck" and os.environ.get("FAKE_HANG") and i == 3:
        time.sleep(60)
    if os.environ.get("FAKE_FAIL_CALL") == str(i) and os.environ.get("FAKE_TOOL") is None:
        print("SAN-CALL %d END FAIL fa_forward: FA_STATUS_CUDA_ERROR: boom" % i, flush=True)
        failed += 1
        continue
    print("SAN-CALL %d END ok 1.5 ms kernels=sm80_k%d,sm90_k%d" % (i, i, i), flush=True)
if "--shard" not in args and "--only" not in args:
    print("SAN-COVERAGE: 6 of 6 compiled kernels that this device serves ran", flush=True)
print("SAN-DONE %d" % (1 if failed else 0), flush=True)
sys.exit(1 if failed else 0)
'''

FAKE_SANITIZER = r'''
import os, subprocess, sys
args = sys.argv[1:]
if args == ["--help"]:
    print("  --tool arg\n  --print-limit arg\n  --check-exit-code arg\n  --show-backtrace arg\n  --padding arg")
    sys.exit(0)
opts = {}
while args and args[0].startswith("--"):
    opts[args[0]] = args[1]
    args = args[2:]
tool = opts["--tool"]
env = dict(os.environ, FAKE_TOOL=tool)
print("========= COMPUTE-SANITIZER", flush=True)
p = subprocess.Popen([sys.executable] + args, stdout=subprocess.PIPE, env=env, universal_newlines=True)
races = 0
for line in p.stdout:
    sys.stdout.write(line)
    sys.stdout.flush()
    if tool == "racecheck" and line.startswith("SAN-CALL 2 BEGIN"):
        races += 1
        print("========= Error: Race reported between Write access at void fa::sm90::bwd_kernel_sm90<__nv_bfloat16, "
              "(int)256, (bool)1, (bool)0, (bool)0>(fa::BwdParams)+0x85e0 in bwd_kernel.cuh:321")
        print("=========     and Read access at void fa::sm90::bwd_kernel_sm90<__nv_bfloat16, (int)256, (bool)1, "
              "(bool)0, (bool)0>(fa::BwdParams)+0x9dc0 in bwd_kernel.cuh:340 [128 hazards]")
        print("=========")
        sys.stdout.flush()
    if tool == "racecheck" and line.startswith("SAN-CALL 5 BEGIN"):
        print("========= Warning: Race reported between Write access at decode_kernel<__half, 64>(fa::DecodeParams)+0x10")
        print("=========     and Write access at decode_kernel<__half, 64>(fa::DecodeParams)+0x10 [4 hazards]")
        sys.stdout.flush()
p.wait()
if tool == "racecheck":
    print("========= RACECHECK SUMMARY: %d hazards displayed (%d errors, %d warnings)" % (2 if races else 0,
          races, 1 if "--only" not in args else 0))
else:
    print("========= ERROR SUMMARY: 0 errors")
sys.exit(p.returncode)
'''

CANNED_MEMCHECK = """SAN-DRIVER: 3 calls planned (fwd 3, bwd 0, decode 0), 3 targeted kernels; running 3
========= COMPUTE-SANITIZER
SAN-CALL 0 BEGIN fwd sm80 bf16 d64 b1 sq64 sk64 h1/1
SAN-CALL 0 END ok 2.0 ms kernels=sm80_fwd_bf16_hdim64_128x64_4w
SAN-CALL 1 BEGIN fwd sm90 bf16 d64 b1 sq64 sk64 h1/1
========= Invalid __global__ write of size 16 bytes
=========     at void fa::sm90::fwd_kernel_sm90<__half, (int)64>(fa::FwdArgs90)+0x1a0 in fwd_kernel.cuh:200
=========     by thread (5,0,0) in block (0,0,0)
=========     Address 0x7f00 is out of bounds
=========
SAN-CALL 1 END FAIL fa_stream_synchronize: FA_STATUS_CUDA_ERROR: unspecified launch failure
SAN-ABORT the CUDA context is lost after call 1 (x); the remaining calls are not run
SAN-DRIVER: 3 calls: 1 ok, 1 failed, 1 not run; 1 kernel launches named by the library, 1 distinct kernels
SAN-DONE 1
========= ERROR SUMMARY: 769 errors
========= ERROR SUMMARY: 669 errors were not printed. Use --print-limit option to adjust the number of printed errors
"""

CANNED_RACECHECK_WRAPPED = """SAN-CALL 7 BEGIN bwd sm90 bf16 d256 causal-br
========= Error: Race reported between Write access at 0x85e0 in bwd_kernel.cuh:321:void bwd_kernel_sm90<(int)256>(P)
========= and Read access at 0x9dc0 in bwd_kernel.cuh:340:void bwd_kernel_sm90<(int)256>(P) [508 hazards]
SAN-CALL 7 END ok 30.0 ms kernels=sm80_fwd_bf16_hdim256_local_128x64_8w,sm90_bwd_bf16_hdim256_local_64x64_2wg
SAN-DONE 0
========= RACECHECK SUMMARY: 100 hazards displayed
========= (4528176 errors, 661824 warnings)
"""

CANNED_SYNCCHECK = """SAN-CALL 3 BEGIN fwd sm90 bf16 d128
========= Barrier error detected. Divergent thread(s) in block.
=========     at fa::named_barrier_sync(int, int)+0x40 in barrier.cuh:21
=========         Device Frame: fa::sm90::fwd_kernel_sm90<__nv_bfloat16, (int)128>(fa::FwdArgs90)+0x15520 in fwd_kernel.cuh:99
=========     by thread (128,0,0) in block (0,0,0)
SAN-CALL 3 END ok 5.0 ms kernels=sm90_fwd_bf16_hdim128_128x128_2wg2s
SAN-DONE 0
========= ERROR SUMMARY: 1 error
"""


def self_test():
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    # Parsing: verdicts, attribution, kernels.
    p = parse_log(CANNED_MEMCHECK)
    expect(p["errors"] == 769 and p["not_printed"] == 669, "memcheck: 769 errors, 669 not printed (%r, %r)" % (
        p["errors"], p["not_printed"]))
    expect(len(p["records"]) == 1 and p["records"][0]["call"] == 1, "memcheck: the record belongs to call 1")
    expect(p["records"][0]["kernel"].startswith("fa::sm90::fwd_kernel_sm90<__half, (int)64>"),
           "memcheck: kernel name with template arguments (%r)" % p["records"][0]["kernel"])
    expect(p["calls"][0]["ok"] and p["calls"][1]["ended"] and not p["calls"][1]["ok"], "memcheck: call states")
    expect(p["abort"] is not None and p["done"] == 1 and p["planned"] == 3, "memcheck: abort, done, planned")
    p = parse_log(CANNED_RACECHECK_WRAPPED)
    expect(p["racecheck"] and p["errors"] == 4528176 and p["warnings"] == 661824 and p["hazards"] == 100,
           "racecheck: the summary wrapped over two lines (%r)" % ((p["errors"], p["warnings"], p["hazards"]),))
    expect(len(p["records"]) == 1 and p["records"][0]["call"] == 7 and "bwd_kernel_sm90<(int)256>" in
           p["records"][0]["kernel"], "racecheck: one record of call 7 naming bwd_kernel_sm90 (%r)" % p["records"])
    expect(p["calls"][7]["kernels"] == ["sm80_fwd_bf16_hdim256_local_128x64_8w",
                                        "sm90_bwd_bf16_hdim256_local_64x64_2wg"], "racecheck: the call's kernels")
    p = parse_log(CANNED_SYNCCHECK)
    expect(p["errors"] == 1 and len(p["records"]) == 1 and p["records"][0]["call"] == 3, "synccheck: one record")
    expect("fwd_kernel_sm90<__nv_bfloat16, (int)128>" in p["records"][0]["kernel"],
           "synccheck: the kernel from the device frame, not the barrier helper (%r)" % p["records"][0]["kernel"])
    p = parse_log("SAN-CALL 0 BEGIN x\nSAN-CALL 0 END ok 1.0 ms kernels=a\n")
    expect(p["errors"] is None, "a log without a sanitizer summary has no verdict")
    p = parse_log("========= ERROR SUMMARY: 0 errors\n")
    expect(p["errors"] == 0 and not p["records"], "a clean summary")

    # The racecheck control's verdict: each way it can fail, and the expected outcome passing.
    good = {"none": (12, 0, False), "sync": (0, 0, False), "arrive": (3, 0, False)}
    expect(handover_verdict(good) == [], "handover: a reported real race and a clean bar.sync pass (%r)" %
           handover_verdict(good))
    for mode, bad, want in (("none", (0, 0, False), "nothing on a real race"),
                            ("none", (None, 0, True), "no racecheck verdict on the real race"),
                            ("sync", (2, 0, False), "2 errors on the bar.sync"),
                            ("sync", (0, 1, False), "sync hand-over read wrong data"),
                            ("arrive", (0, 1, False), "arrive hand-over read wrong data"),
                            ("arrive", (None, 0, False), "no racecheck verdict on the arrive")):
        got = handover_verdict(dict(good, **{mode: bad}))
        expect(any(want in g for g in got), "handover: %s %r gives '%s' (%r)" % (mode, bad, want, got))

    # End to end with a fake driver and a fake compute-sanitizer: shards, timeouts, attribution, confirmation.
    with tempfile.TemporaryDirectory() as tmp:
        drv = os.path.join(tmp, "driver")
        san = os.path.join(tmp, "compute-sanitizer")
        for path, body in ((drv, FAKE_DRIVER), (san, FAKE_SANITIZER)):
            with open(path, "w") as f:
                f.write("#!" + sys.executable + "\n" + body)
            os.chmod(path, 0o755)

        def run(extra, env_extra):
            logdir = tempfile.mkdtemp(dir=tmp)
            old = {k: os.environ.get(k) for k in env_extra}
            os.environ.update(env_extra)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    rc = main(["--driver", drv, "--sanitizer", san, "--logdir", logdir] + extra)
            finally:
                for k, v in old.items():
                    if v is None:
                        os.environ.pop(k, None)
                    else:
                        os.environ[k] = v
            with open(os.path.join(logdir, "sanitize-summary.txt")) as f:
                return rc, f.read()

        rc, text = run(["--tools", "memcheck,initcheck", "--shards", "memcheck=2"], {})
        expect(rc == 0 and text.startswith("passed=3 failed=0 skipped=0"), "clean run: 3 passed (%r)" % text)
        expect("sanitize: device 0 Fake GPU, compute capability 9.0; 6 calls planned; without a tool: 6 ok, 0 failed"
               in text, "clean run: the plain run's line (%r)" % text)
        expect("sanitize memcheck: 6 of 6 calls run (12 kernel launches named by the library, 12 distinct kernels), "
               "0 errors" in text, "clean run: the memcheck line counts both shards (%r)" % text)
        rc, text = run(["--tools", "racecheck,synccheck", "--shards", "racecheck=3"], {})
        expect(rc == 1 and text.startswith("passed=2 failed=1"), "racecheck errors: one failure (%r)" % text)
        expect("sanitize racecheck: call 2 (bwd call 2): 1 error and 0 warning records [alone: 1 errors]" in text,
               "racecheck errors: call 2 named, confirmed alone (%r)" % text)
        expect("bwd_kernel_sm90<__nv_bfloat16, (int)256, (bool)1, (bool)0, (bool)0>" in text,
               "racecheck errors: the kernel named (%r)" % text)
        expect("call 5 (decode call 5): 0 error and 1 warning records" in text, "racecheck warning listed (%r)" % text)
        rc, text = run(["--tools", "synccheck", "--timeout", "3"], {"FAKE_HANG": "1"})
        expect(rc == 1 and "synccheck shard 1/2 timed out (at call 3" in text, "a hang is killed and reported (%r)" % text)
        rc, text = run(["--tools", "memcheck"], {"FAKE_FAIL_CALL": "4"})
        expect(rc == 1 and "without a tool, call 4 failed" in text, "a failed call without a tool (%r)" % text)
        rc, text = run(["--tools", "memcheck", "--sanitizer", os.path.join(tmp, "none")], {})
        expect(rc == 1 and "compute-sanitizer not found" in text, "a missing sanitizer is a failure (%r)" % text)

    for f in failures:
        print("FAIL self-test: " + f)
    print("run_sanitizers.py self-test: %d failures" % len(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""The parts of the run that are child processes: the managed benchmark exe (bench/README.md has its contract)
and the C interop baseline bench/interop_c.c, compiled here with cc. Both run before this process holds GPU
memory."""
import json
import os
import shutil
import subprocess
import tempfile

from common import REPO
from shapes import managed_spec, shape_key


def run_managed(exe, shapes, lib, warmup, iters, log):
    """Runs the C# bench once for all shapes; returns ({shape_key: row}, error, interop line)."""
    if not exe:
        return {}, None, None
    if not os.path.exists(exe):
        return {}, f"{exe} not found", None
    spec = [managed_spec(s) for s in shapes]
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
        spec_path = f.name
    env = dict(os.environ)
    if lib:
        env["FLASH_ATTENTION_NATIVE_PATH"] = lib
    cmd = [exe, "--shapes", spec_path, "--warmup", str(warmup), "--iters", str(iters), "--interop"]
    print("# managed bench:", " ".join(cmd), file=log, flush=True)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    except Exception as e:  # noqa: BLE001 - any failure is reported, the PyTorch side still runs
        return {}, f"bench exe did not run: {e}", None
    finally:
        os.unlink(spec_path)
    out = {}
    interop = None
    for line in p.stdout.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            print("# managed:", line, file=log)
            continue
        try:
            r = json.loads(line)
            if r.get("pass") == "interop":
                interop = r  # host cost of one managed Forward call
                continue
            out[shape_key(r)] = r
        except (ValueError, KeyError, TypeError) as e:
            print(f"# managed: unreadable line ({e}): {line}", file=log)
    for line in p.stderr.splitlines()[-20:]:
        print("# managed stderr:", line, file=log)
    err = None if p.returncode == 0 else f"bench exe exit code {p.returncode}"
    return out, err, interop


def run_interop_c(src, lib_path, log):
    """Compiles bench/interop_c.c against the library and runs it; returns (its JSON line, error)."""
    if not os.path.exists(src):
        return None, f"{src} not found"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, "no C compiler (cc, gcc, clang) on PATH"
    libdir = os.path.dirname(lib_path)
    include = os.path.join(REPO, "native", "include")
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "interop_c")
        cmd = [cc, "-O2", src, f"-I{include}", f"-L{libdir}", "-lflash_attention", f"-Wl,-rpath,{libdir}", "-o", exe]
        print("# interop_c:", " ".join(cmd), file=log, flush=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            return None, f"compile failed: {(p.stderr.strip().splitlines() or ['?'])[-1][:200]}"
        try:
            p = subprocess.run([exe], capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            return None, "interop_c timed out"
    for line in p.stderr.splitlines()[-5:]:
        print("# interop_c stderr:", line, file=log)
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            try:
                return json.loads(line), None
            except ValueError:
                pass
    return None, f"interop_c exit code {p.returncode}: {(p.stderr.strip().splitlines() or ['no output'])[-1][:200]}"

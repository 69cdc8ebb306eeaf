#!/usr/bin/env python3
"""Adds a native library to a .nupkg at runtimes/<rid>/native/<file name>, so that NuGet copies it next to
the consuming application (./build.sh pack uses it for libflash_attention.so).

    tools/add_native_to_nupkg.py <package.nupkg> <library> [--rid linux-x64]

The package is rewritten in place: every entry is kept, an existing copy of the library is replaced, and
[Content_Types].xml gets a Default entry for the library's extension when it has none.
"""
import argparse
import os
import shutil
import sys
import tempfile
import zipfile


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("package")
    ap.add_argument("library")
    ap.add_argument("--rid", default="linux-x64")
    args = ap.parse_args()

    target = f"runtimes/{args.rid}/native/{os.path.basename(args.library)}"
    ext = os.path.splitext(args.library)[1].lstrip(".")
    fd, tmp = tempfile.mkstemp(suffix=".nupkg", dir=os.path.dirname(os.path.abspath(args.package)))
    os.close(fd)
    try:
        with zipfile.ZipFile(args.package) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for item in src.infolist():
                if item.filename == target:
                    continue
                data = src.read(item.filename)
                if item.filename == "[Content_Types].xml" and ext:
                    text = data.decode("utf-8")
                    if f'Extension="{ext}"' not in text:
                        entry = f'<Default Extension="{ext}" ContentType="application/octet" />'
                        text = text.replace("</Types>", entry + "</Types>")
                    data = text.encode("utf-8")
                dst.writestr(item, data)
            dst.write(args.library, target)
        os.chmod(tmp, 0o644)
        shutil.move(tmp, args.package)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"    added {target} to {args.package}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""python -m harness.bundle make | verify | install (see harness/bundle/__init__.py)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from harness.bundle import __doc__ as DOC
from harness.bundle.make import GROUPS, make
from harness.bundle.parts import DEFAULT_PART_SIZE, MANIFEST, BundleError, human_size, install, parse_size, verify


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.bundle", description=DOC.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="stage, download and split a bundle into DIR/parts")
    mk.add_argument("--with", dest="groups", default="lsp,pydantic",
                    help=f"comma-separated groups: {','.join(GROUPS)} (default lsp,pydantic)")
    mk.add_argument("--part-size", default=str(DEFAULT_PART_SIZE), help="largest part, e.g. 60M (default 60 MiB)")
    mk.add_argument("--images", type=int, default=320, help="LSP images in the lsp group (default 320)")
    mk.add_argument("--lsp", type=Path, default=Path(os.environ.get("SATPOSE_DATASETS", "../shared/datasets")) / "lsp")
    mk.add_argument("--cache", type=Path, help="where wheels are downloaded and kept (default DIR/cache)")
    for s in (mk, sub.add_parser("verify", help="check every part against the manifest"),
              ins := sub.add_parser("install", help="verify, reassemble, pip install --no-index --target")):
        s.add_argument("--dir", type=Path, default=Path(".gpu"), help="the bundle folder (parts in DIR/parts)")
    ins.add_argument("--site", type=Path, help="pip's --target (default DIR/site)")
    args = p.parse_args(argv)
    try:
        if args.command == "make":
            m = make(args.groups.split(","), args.dir, parse_size(args.part_size), args.images, args.lsp,
                     args.cache or args.dir / "cache")
            print(f"bundle {m['bundle']}: groups {', '.join(m['groups'])}; {len(m['files'])} files, "
                  f"{human_size(m['total_size'])} in {m['part_count']} parts of at most {human_size(m['part_size'])}:")
            for part in m["parts"]:
                print(f"  {args.dir / 'parts' / part['name']}  {human_size(part['size'])}")
            print(f"  {args.dir / 'parts' / MANIFEST}  (send with every part)")
        elif args.command == "verify":
            m = verify(args.dir / "parts")
            print(f"bundle {m['bundle']}: all {m['part_count']} parts present and their sha256 match "
                  f"({human_size(m['total_size'])}, groups {', '.join(m['groups'])})")
        else:
            site = install(args.dir, args.site)
            print(f"PYTHONPATH={site.resolve()}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (BundleError, OSError, subprocess.CalledProcessError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

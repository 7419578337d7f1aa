"""Offline bundles in parts (parts.py: pack, verify, install; make.py: the groups and downloads;
__main__.py: the CLI): what a bare, offline GPU image (or an air-gapped cluster) lacks, split into
numbered parts small enough for one transfer each, with a manifest of hashes; reassembled, verified and
installed there with python3 + pip alone (this module imports nothing outside the standard library).

    python -m harness.bundle make [--with lsp,pydantic,dali,deepspeed,ray] [--dir .gpu] [--part-size 60MiB]
                                  [--images 320] [--lsp DIR] [--cache DIR]
    python -m harness.bundle verify [--dir .gpu]
    python -m harness.bundle install [--dir .gpu] [--site DIR]

`make` stages the chosen groups' files (an LSP subset as lsp/; wheels for CPython 3.12 on manylinux x86_64 as
wheels/, downloaded with pip, or built from the sdist where PyPI has no wheel), concatenates them into one
byte stream in install order and cuts it into DIR/parts/satpose-<id>.NNN-of-MMM.part, beside
DIR/parts/manifest.json: each file's path, size, sha256 and offset in the stream; each part's name, size and
sha256; the part count; the wheels' install order; the modules each group must make importable. The id is a
hash of the contents, so parts of two bundles never share a name. `verify` checks every part against the
manifest and names each missing, truncated or corrupt part (expected against found size and sha256), the files
it breaks, and parts found there that belong to another bundle. `install` verifies, reassembles the files
under DIR (DIR/lsp, DIR/wheels: where scripts/gpu_check.sh looks), checks every file's sha256, installs the
wheels with `pip install --no-index --no-deps --target SITE` (default DIR/site) and prints the PYTHONPATH to
use. Exit codes: 0 done, 1 a part or file is missing or corrupt (or pip failed), 2 bad arguments.
"""

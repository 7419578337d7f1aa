"""Stand-in for the sweep driver in slurm/sweep.sh (SATPOSE_SWEEP_MODULE=sweep_probe, PYTHONPATH=tests).

Run inside the job, against the Ray cluster sweep.sh started (RAY_ADDRESS, RAY_AUTH_MODE=token and
RAY_AUTH_TOKEN_PATH in the environment), it tries three clients in fresh processes: one without any
token (auth mode unset, a HOME without ~/.ray/auth_token), one with a wrong token, and one with the job's
token; each must connect and run a task, or be refused. It writes what happened, the token file's mode
and the listening TCP sockets of the job's Ray processes to EXPERIMENT/auth_probe.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENT = ("import os, ray; ray.init(address=os.environ['RAY_ADDRESS'], log_to_driver=False); "
          "print('RESULT', ray.get(ray.remote(lambda: 6 * 7).remote()))")


def _client(env: dict[str, str]) -> dict:
    try:
        out = subprocess.run([sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        return {"connected": False, "why": "timeout"}
    connected = out.returncode == 0 and "RESULT 42" in out.stdout
    lines = [line for line in (out.stderr + out.stdout).splitlines() if line.strip()]
    refusals = [line for line in lines if "InvalidAuthToken" in line]  # the GCS's answer, if it refused
    why = (refusals or lines or [""])[-1]
    return {"connected": connected, "returncode": out.returncode, "why": why[:300]}


def _listening(temp_dir: str) -> list[dict]:
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if temp_dir not in cmd and not proc.info["name"].startswith("ray::"):
                continue
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append({"name": proc.info["name"], "ip": conn.laddr.ip, "port": conn.laddr.port})
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("--storage", required=True)
    parser.add_argument("--name", required=True)
    args, _ = parser.parse_known_args()
    token_path = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    with tempfile.TemporaryDirectory() as home:
        wrong = Path(home) / "wrong_token"
        wrong.write_text(secrets.token_hex(32))
        report = {
            "no_token": _client({**base, "HOME": home}),
            "wrong_token": _client({**base, "HOME": home, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(wrong)}),
            "token": _client(dict(os.environ)),
        }
    report["token_file_mode"] = oct(stat.S_IMODE(token_path.stat().st_mode))
    report["listening"] = _listening(f"/tmp/ray_{os.environ['SLURM_JOB_ID']}")
    out = Path(args.storage) / args.name / "auth_probe.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"auth probe: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/bin/sh
# Prints shell `export` lines that make pip skip an unreachable primary package
# index when other indexes are configured (pip.conf's extra-index-url), instead
# of waiting out its time-out for every package. Prints nothing when the
# primary index answers or nothing else is configured.
#   eval "$(tools/pip-index-env.sh PYTHON)"
py=${1:-python3}
"$py" - <<'PY'
import os
import shlex
import subprocess
import sys
import urllib.request


def pip_config(key: str) -> str:
    env_key = "PIP_" + key.replace("-", "_").upper()
    if os.environ.get(env_key):
        return os.environ[env_key]
    res = subprocess.run([sys.executable, "-m", "pip", "config", "get", f"global.{key}"],
                         capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else ""


primary = pip_config("index-url") or "https://pypi.org/simple"
extras = pip_config("extra-index-url").split()
if not extras or not primary.startswith("http"):
    sys.exit(0)
try:
    urllib.request.urlopen(primary.rstrip("/") + "/pip/", timeout=8).close()
except Exception as exc:  # unreachable: fall back to the configured mirrors
    print(f"echo 'pip: {primary} does not answer ({type(exc).__name__}); "
          f"using {extras[0]}' >&2")
    print(f"export PIP_INDEX_URL={shlex.quote(extras[0])}")
PY

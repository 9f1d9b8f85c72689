"""What the agent loads at start: the update feature's download (urllib, http, email) and release checks
(cryptography's X.509 and the PKCS#11 binding, through ``provisioning.release``) load only when an update job
runs, as the jobs feature's uploads do; the robot's agent stays small (``bench/agent_footprint.py``)."""

from __future__ import annotations

import json
import subprocess
import sys

LATER = ("urllib.request", "http.client", "email", "provisioning.release", "pkcs11", "tarfile")


def test_starting_the_agent_loads_no_update_download_or_release_code() -> None:
    code = (
        "import json, sys; import agent.daemon, agent.cli, agent.features.update; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {LATER!r} or m in {LATER!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == []

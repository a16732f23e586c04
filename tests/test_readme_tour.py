"""The README's five-minute tour, run as written against a freshly started `tokensvc serve`.

The tour's ```bash blocks are taken from README.md verbatim and run by bash, from the
service's directory (they read `var/admin.key`), with only `BASE` set to the test's port: the
README itself reads `BASE=${BASE:-http://127.0.0.1:8000}`. If the README drifts from what the
service does, this fails.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_cli import CliService

README = Path(__file__).parent.parent / "README.md"
TOUR_HEADING = "## A five-minute tour"


def tour_script() -> str:
    text = README.read_text()
    assert TOUR_HEADING in text
    section = text.split(TOUR_HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert len(blocks) >= 8, "the tour lost some of its steps"
    return "\n".join(blocks)


def json_documents(output: str) -> list[object]:
    """The JSON documents `python3 -m json.tool` printed, in order, and nothing else."""
    decoder = json.JSONDecoder()
    docs: list[object] = []
    i = 0
    while (start := output.find("{", i)) != -1:
        doc, i = decoder.raw_decode(output, start)
        docs.append(doc)
    return docs


def test_the_script_reads_naturally() -> None:
    script = tour_script()
    assert "BASE=${BASE:-http://127.0.0.1:8000}" in script
    assert "$(cat var/admin.key)" in script
    assert "jq" not in script


@pytest.mark.skipif(shutil.which("curl") is None, reason="the tour uses curl")
def test_readme_tour_works_as_written(tmp_path: Path) -> None:
    svc = CliService(tmp_path).start()
    try:
        svc.wait_ready()
        env = {**svc.env, "BASE": svc.url}
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", tour_script()], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
    finally:
        assert svc.stop() == 0
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}"
    assert run.stderr == ""
    docs = json_documents(run.stdout)
    client, user, cc, password, refreshed, active, inactive = docs
    assert isinstance(client, dict) and client["client_secret"].startswith("tsv_cs_")
    assert client["grant_types"] == ["client_credentials", "password", "refresh_token"]
    assert isinstance(user, dict) and user["username"] == "alice" and user["verified"] is True
    assert isinstance(cc, dict) and cc["access_token"].startswith("tsv_at_")
    assert cc["token_type"] == "Bearer" and cc["scope"] == "read" and "refresh_token" not in cc
    assert isinstance(password, dict) and password["scope"] == "read write"
    assert password["access_token"].startswith("tsv_at_")
    assert password["refresh_token"].startswith("tsv_rt_")
    assert isinstance(refreshed, dict) and refreshed["refresh_token"] != password["refresh_token"]
    assert refreshed["access_token"].startswith("tsv_at_")
    assert isinstance(active, dict) and active["active"] is True and active["username"] == "alice"
    assert "revoke: HTTP 200" in run.stdout
    assert inactive == {"active": False}
    assert run.stdout.rstrip().endswith('"active": false\n}')

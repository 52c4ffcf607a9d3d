"""The README's quick-start examples run as written against a real server.

Only the address (the docs say port 8000, the test server has a free port) and the API key (the test
server requires one) are substituted; the code itself is executed unchanged in a fresh interpreter, and
the curl example through bash, as a reader would paste them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.api.fixtures import API_KEY
from tests.serving.api.server_process import ServerProcess

README = Path(__file__).resolve().parents[1] / "README.md"
DOCUMENTED_URL = re.compile(r"http://(?:localhost|127\.0\.0\.1|0\.0\.0\.0):8000")
INLINE_API_KEY = re.compile(r"""api_key\s*=\s*(["'])[^"']*\1""")


def code_blocks(language: str, marker: str) -> list[str]:
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)
    return [block for block in blocks if marker in block]


def pointed_at(code: str, server: ServerProcess) -> str:
    assert DOCUMENTED_URL.search(code), "the example should name the server's default address"
    return DOCUMENTED_URL.sub(server.base_url, code)


def run(command: list[str], server: ServerProcess) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENAI_API_KEY": API_KEY, "TPUSERVE_API_KEY": API_KEY}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                          cwd=README.parent, check=False)


def test_python_client_example_runs(server: ServerProcess) -> None:
    [example] = code_blocks("python", "OpenAI(")
    code = INLINE_API_KEY.sub(f'api_key="{API_KEY}"', pointed_at(example, server))
    result = run([sys.executable, "-c", code], server)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip(), "the example should print the model's answer"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_example_runs(server: ServerProcess) -> None:
    [example] = code_blocks("(?:bash|sh|shell|console)", "curl ")
    command = pointed_at(example, server).replace("$ ", "")
    if "Authorization" not in command:
        command = command.replace("curl ", f'curl -H "Authorization: Bearer {API_KEY}" ', 1)
    result = run(["bash", "-c", command], server)
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["choices"] and body["usage"]["completion_tokens"] >= 1

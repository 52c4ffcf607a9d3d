"""Fixtures around one real `tpuserve serve` process for the whole test session, and its clients.

Loaded as a plugin by tests/conftest.py (not as a conftest) so that tests outside this package, like the
README test, share this server instead of starting a second one. It runs with an API key so every test
also exercises auth; the clients send it. The model is the embedded SmolLM2-135M-Instruct; `loaded` is the
same checkpoint in-process, for independent references (token counts, chat templates, offline `LLM`).

Set TPUSERVE_TEST_SERVER=http://HOST:PORT (and TPUSERVE_TEST_API_KEY) to run the suite against a server
that is already up, e.g. `tpuserve serve --max-model-len 1024 ...` left running while editing tests.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.serving.api.server_process import ENGINE_ARGS, ServerProcess
from tpuserve.model import LoadedModel, load_model

EXTERNAL_SERVER = os.environ.get("TPUSERVE_TEST_SERVER")
API_KEY = os.environ.get("TPUSERVE_TEST_API_KEY") or "test-key-" + random.randbytes(6).hex()
REQUEST_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def loaded() -> LoadedModel:
    return load_model(None)


_WANTS_SERVER = pytest.StashKey[bool]()


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_WANTS_SERVER] = any("server" in getattr(item, "fixturenames", ())
                                              for item in session.items)


@pytest.fixture(scope="session", autouse=True)
def _launched_server(request: pytest.FixtureRequest,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess | None]:
    """The session's server, launched as the session starts when a selected test needs it: it loads and
    compiles in its own process (a minute or more on a 2-core CPU) while the tests before the API tests
    run, mostly on the other core. Launched after `loaded`, so it reads the warm converted checkpoint."""
    if EXTERNAL_SERVER or not request.config.stash.get(_WANTS_SERVER, False):
        yield None
        return
    request.getfixturevalue("loaded")
    process = ServerProcess.launch(tmp_path_factory.mktemp("server") / "server.log", *ENGINE_ARGS,
                                   api_key=API_KEY)
    yield process
    status = process.stop()
    assert status == 0, f"server exited with {status} on SIGTERM:\n{process.log_tail()}"


@pytest.fixture(scope="session")
def server(_launched_server: ServerProcess | None) -> ServerProcess:
    if _launched_server is None:
        return ServerProcess.attach(EXTERNAL_SERVER, API_KEY)
    _launched_server.wait_healthy()
    return _launched_server


@pytest.fixture(scope="session")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    """Raw HTTP with the API key: for what the openai client hides (status codes, SSE framing)."""
    with httpx.Client(base_url=server.base_url, headers=server.headers, timeout=REQUEST_TIMEOUT_S) as client:
        yield client


@pytest.fixture(scope="session")
def client(server: ServerProcess) -> openai.OpenAI:
    """The official client; no retries, so a 5xx shows up as a failure instead of being retried."""
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0,
                         timeout=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="session")
def model_name(http: httpx.Client) -> str:
    return http.get("/v1/models").json()["data"][0]["id"]


@pytest.fixture
def rng() -> random.Random:
    return random.Random()

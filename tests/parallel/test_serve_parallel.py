"""`tpuserve serve --data-parallel-size 2 --tensor-parallel-size 2` behind one API, on 4 fake CPU devices."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import pytest

from tests.parallel.checkpoints import write_family_checkpoint
from tests.serving.api.server_process import ServerProcess
from tpuserve.serving import LLM, SamplingParams

ENGINE = {"max_model_len": 128, "max_num_seqs": 8, "max_num_batched_tokens": 32, "page_size": 16,
          "min_token_bucket": 16}
PROMPTS = [[5, 17, 2, 44], [9, 9, 31], [60, 1, 2, 3, 4, 5, 6], [12], [70, 71], [33, 34, 35, 36, 37]]


def test_replicas_behind_one_server_answer_like_one_device(tmp_path: Path, monkeypatch) -> None:
    checkpoint = write_family_checkpoint("llama", tmp_path / "llama")
    single = LLM(str(checkpoint), "float32", use_tqdm=False, **ENGINE)
    greedy = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    expected = [o.outputs[0] for o in single.generate(PROMPTS, greedy, use_tqdm=False)]

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    args = [str(checkpoint), "--dtype", "float32", "--data-parallel-size", "2", "--tensor-parallel-size", "2"]
    for name, value in ENGINE.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    server = ServerProcess.start(tmp_path / "server.log", *args)
    try:
        def complete(prompt: list[int]) -> dict:
            body = {"model": str(checkpoint), "prompt": prompt, "max_tokens": 4, "temperature": 0,
                    "ignore_eos": True}
            response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
            assert response.status_code == 200, response.text
            return response.json()

        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            answers = list(pool.map(complete, PROMPTS))
        for answer, completion in zip(answers, expected, strict=True):
            assert answer["usage"]["completion_tokens"] == len(completion.token_ids) == 4
            assert answer["choices"][0]["text"] == completion.text
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        assert 'vllm:num_requests_running{model_name' in metrics
        success = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("vllm:request_success_total"))
        assert success == len(PROMPTS)
    finally:
        assert server.stop() == 0, server.log_tail()


pytestmark = pytest.mark.slow

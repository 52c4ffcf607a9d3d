"""An interpreter started in the checkout root imports the installed packages, never our folders by bare name.

`python -c`, `python -m`, pytest's rootdir insertion and notebooks put the checkout root first on `sys.path`,
where the top folders `kernels/`, `model/` and `serving/` sit. Hugging Face's `kernels` package, which
transformers imports whenever it is installed, must still win over our `kernels/`.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from tests.model.tiny_checkpoint import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]

# Run with the checkout root as sys.path[0] (what `-c` gives); prints where `kernels` came from.
IN_CHECKOUT = """
import sys
assert sys.path[0] == "", sys.path[:2]
import kernels
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from tpuserve.model import load_model
from tpuserve.serving import LLM

transformers.LlamaConfig
checkpoint = sys.argv[1]
assert AutoConfig.from_pretrained(checkpoint).model_type == "llama"
assert AutoTokenizer.from_pretrained(checkpoint).eos_token == "</s>"
assert AutoModelForCausalLM.from_pretrained(checkpoint).num_parameters() > 0
assert load_model(checkpoint).config.num_layers == 2
for bare in ("model", "serving"):
    try:
        __import__(bare)
    except ImportError as error:
        assert f"tpuserve.{bare}" in str(error), error
    else:
        raise AssertionError(f"bare `import {bare}` succeeded")
assert LLM.__module__.startswith("tpuserve.serving")
print(kernels.__file__)
"""


def test_checkout_root_does_not_shadow_installed_packages(tmp_path: Path) -> None:
    assert importlib.metadata.version("kernels"), "Hugging Face's `kernels` must be installed (test extra)"
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", "PYTHONPATH")}
    run = subprocess.run([sys.executable, "-c", IN_CHECKOUT, str(checkpoint)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    kernels_file = Path(run.stdout.strip().splitlines()[-1]).resolve()
    assert not kernels_file.is_relative_to(ROOT / "kernels"), kernels_file
    assert "site-packages" in kernels_file.parts, kernels_file

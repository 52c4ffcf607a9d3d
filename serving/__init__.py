"""tpuserve.serving: the engine, scheduler, sampler and APIs on top of tpuserve.model."""

from tpuserve.serving.llm import LLM
from tpuserve.serving.outputs import CompletionOutput, Logprob, RequestOutput
from tpuserve.serving.sampling_params import SamplingParams, SamplingParamsError

__all__ = ["LLM", "CompletionOutput", "Logprob", "RequestOutput", "SamplingParams", "SamplingParamsError"]

if __name__ != "tpuserve.serving":  # run from the checkout root, the folder is also reachable as a bare name
    raise ImportError(f"{__name__!r} is this checkout's serving/ folder; import it as tpuserve.serving")

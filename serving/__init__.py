"""tpuserve.serving: the engine, scheduler, sampler and APIs on top of tpuserve.model."""

from tpuserve.serving.llm import LLM
from tpuserve.serving.outputs import CompletionOutput, Logprob, RequestOutput
from tpuserve.serving.sampling_params import SamplingParams, SamplingParamsError

__all__ = ["LLM", "CompletionOutput", "Logprob", "RequestOutput", "SamplingParams", "SamplingParamsError"]

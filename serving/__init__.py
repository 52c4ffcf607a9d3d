"""tpuserve.serving: the engine, scheduler, sampler and APIs on top of tpuserve.model."""

from tpuserve.serving.sampling_params import SamplingParams, SamplingParamsError

__all__ = ["SamplingParams", "SamplingParamsError"]

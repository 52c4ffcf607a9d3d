"""Request fields to `SamplingParams`: defaults from the model's generation_config, vLLM's token budget.

A sampling field the request leaves unset takes the model's `generation_config.json` value (vLLM's
`--generation-config auto`), else OpenAI's default. Without a max_tokens the output may fill the rest of
the context; asking for more than that is a 400, never silently clamped.
"""

from __future__ import annotations

from typing import Any

from tpuserve.serving.api.errors import APIError
from tpuserve.serving.api.protocol import SamplingFields
from tpuserve.serving.sampling_params import SamplingParams

DEFAULTED_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")
OPENAI_DEFAULTS = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
}


def generation_defaults(generation_config: dict[str, Any]) -> dict[str, Any]:
    """The sampling defaults a model ships with (only the fields vLLM takes from generation_config)."""
    defaults = {
        name: generation_config[name] for name in DEFAULTED_FIELDS if generation_config.get(name) is not None
    }
    if generation_config.get("max_new_tokens") is not None:
        defaults["max_new_tokens"] = int(generation_config["max_new_tokens"])
    return defaults


def resolve_max_tokens(
    name: str, requested: int | None, num_prompt_tokens: int, max_model_len: int, default_cap: int | None
) -> int:
    room = max_model_len - num_prompt_tokens
    if requested is None:
        return room if default_cap is None else min(room, default_cap)
    if requested < 1:
        raise APIError(f"{name} must be at least 1, got {requested}", param=name)
    if requested > room:
        raise APIError(
            f"'{name}' is too large: {requested}. This model's maximum context length is "
            f"{max_model_len} tokens and your request has {num_prompt_tokens} input tokens "
            f"({requested} > {max_model_len} - {num_prompt_tokens}).",
            param=name,
        )
    return requested


def sampling_params(
    request: SamplingFields,
    *,
    max_tokens: int,
    logprobs: int | None,
    prompt_logprobs: int | None,
    defaults: dict[str, Any],
    max_logprobs: int,
    vocab_size: int,
) -> SamplingParams:
    fields = {
        name: _first_set(getattr(request, name), defaults.get(name), OPENAI_DEFAULTS[name])
        for name in OPENAI_DEFAULTS
    }
    params = SamplingParams(
        n=request.n,
        seed=request.seed,
        stop=request.stop,
        stop_token_ids=request.stop_token_ids,
        ignore_eos=request.ignore_eos,
        max_tokens=max_tokens,
        min_tokens=request.min_tokens,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=request.skip_special_tokens,
        spaces_between_special_tokens=request.spaces_between_special_tokens,
        include_stop_str_in_output=request.include_stop_str_in_output,
        logit_bias=request.logit_bias,
        allowed_token_ids=request.allowed_token_ids,
        max_logprobs=max_logprobs,
        **fields,
    )
    params.check_vocab(vocab_size)
    return params


def _first_set(*values: Any) -> Any:
    return next(v for v in values if v is not None)

"""POST /tokenize and /detokenize (vLLM extensions): the server's own tokenizer and chat template."""

from __future__ import annotations

from tpuserve.serving.api.context import ServingContext
from tpuserve.serving.api.prompts import check_token_ids
from tpuserve.serving.api.protocol import DetokenizeRequest, TokenizeChatRequest, TokenizeRequest
from tpuserve.serving.api.responses import DetokenizeResponse, TokenizeResponse


def tokenize(ctx: ServingContext, request: TokenizeRequest) -> TokenizeResponse:
    """A prompt, or chat messages rendered exactly as /v1/chat/completions would render them."""
    ctx.check_model(request.model)
    text = ctx.render_chat(request) if isinstance(request, TokenizeChatRequest) else request.prompt
    token_ids = ctx.tokenizer.encode(text, add_special_tokens=request.add_special_tokens)
    token_strs = ctx.tokenizer.convert_ids_to_tokens(token_ids) if request.return_token_strs else None
    return TokenizeResponse(
        count=len(token_ids), max_model_len=ctx.max_model_len, tokens=token_ids, token_strs=token_strs
    )


def detokenize(ctx: ServingContext, request: DetokenizeRequest) -> DetokenizeResponse:
    ctx.check_model(request.model)
    check_token_ids(request.tokens, ctx.vocab_size, "tokens")
    return DetokenizeResponse(prompt=ctx.tokenizer.decode(request.tokens))

"""LLM: the offline API for scripts and notebooks (vLLM's shape)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

from tqdm.auto import tqdm

from jaxserve.engine.engine_args import EngineArgs, build_engine
from jaxserve.engine.llm_engine import LLMEngine, Prompt
from jaxserve.outputs import RequestOutput
from jaxserve.sampling_params import SamplingParams


class LLM:
    """Load a model once, then `generate` or `chat` over many prompts with continuous batching.

    `LLM()` serves the default model (SmolLM2-135M-Instruct, installed by `make install`). Keyword arguments are
    those of `EngineArgs`: dtype, max_model_len, max_num_seqs, max_num_batched_tokens, block_size, kv_cache_memory,
    num_kv_blocks, kv_cache_dtype ("int8" for int8 KV pages), quantization ("int8" | "int4"),
    quantization_group_size, quantize_embedding, skip_tokenizer_init, seed, ...
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        fields = {f.name for f in dataclasses.fields(EngineArgs)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise TypeError(f"unknown LLM arguments: {', '.join(unknown)}")
        self.engine: LLMEngine = build_engine(EngineArgs(model=model, **kwargs))
        self._ids = itertools.count()

    def memory_usage(self) -> dict[str, Any]:
        """Device memory of the model and its KV cache.

        `weights_bytes` (parameters as held: quantized weights at their integer size plus scales),
        `kv_cache_bytes` (the page arrays, scales included), `kv_bytes_per_token`, `num_kv_blocks`, `block_size`,
        `kv_cache_dtype`, `quantization`, and `max_concurrency` (full-length sequences the pool holds).
        """
        from jaxserve.kv_cache import cache_nbytes, kv_bytes_per_token
        from jaxserve.quant import param_nbytes

        config, runner = self.engine.config, self.engine.runner
        return {
            "weights_bytes": param_nbytes(runner.params),
            "kv_cache_bytes": cache_nbytes(runner.cache),
            "kv_bytes_per_token": kv_bytes_per_token(config.model, config.kv_dtype),
            "num_kv_blocks": runner.num_blocks,
            "block_size": config.cache.block_size,
            "kv_cache_dtype": config.kv_dtype,
            "quantization": config.quantization,
            "max_concurrency": (runner.num_blocks - 1) / config.max_blocks_per_seq,
        }

    def get_tokenizer(self) -> Any:
        """The model's tokenizer (None with skip_tokenizer_init)."""
        return self.engine.get_tokenizer()

    def generate(self, prompts: Prompt | Sequence[Prompt], sampling_params: SamplingParams |
                 Sequence[SamplingParams] | None = None, use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for every prompt (a string, a list of token ids, or {"prompt_token_ids": [...]}).

        Returns one finished RequestOutput per prompt, in the order given. All prompts are validated before any
        runs, so a bad one raises ValueError without leaving others queued.
        """
        if isinstance(prompts, (str, dict)) or (isinstance(prompts, list) and prompts
                                                 and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            params_list = [sampling_params or SamplingParams()] * len(prompts)
        else:
            params_list = list(sampling_params)
            if len(params_list) != len(prompts):
                raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts")
        ids = [f"llm-{next(self._ids)}" for _ in prompts]
        added = []
        try:
            for request_id, prompt, params in zip(ids, prompts, params_list):
                self.engine.add_request(request_id, prompt, params)
                added.append(request_id)
        except Exception:
            for request_id in added:
                self.engine.abort_request(request_id)
            raise
        return self._run(ids, use_tqdm)

    def chat(self, messages: list[dict[str, str]] | list[list[dict[str, str]]],
             sampling_params: SamplingParams | None = None, use_tqdm: bool = True, add_generation_prompt: bool = True,
             chat_template_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        """Render conversation(s) with the model's chat template and generate replies."""
        tokenizer = self.get_tokenizer()
        if tokenizer is None:
            raise ValueError("chat needs a tokenizer (the engine was started with skip_tokenizer_init=True)")
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts = []
        for conversation in conversations:
            text = tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt,
                                                 **(chat_template_kwargs or {}))
            # The template writes any BOS itself; encoding must not add another.
            prompts.append({"prompt": text, "prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)})
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        finished: dict[str, RequestOutput] = {}
        wanted = set(ids)
        with tqdm(total=len(ids), desc="generating", disable=not use_tqdm) as bar:
            while wanted - finished.keys():
                if not self.engine.has_unfinished_requests():
                    raise RuntimeError("the engine stopped with requests unfinished")
                for out in self.engine.step():
                    if out.finished and out.request_id in wanted:
                        finished[out.request_id] = out
                        bar.update(1)
        return [finished[i] for i in ids]

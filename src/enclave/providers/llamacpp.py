"""The embedded llama.cpp provider: GGUF models served in-process.

Each model gets ``runner.slots`` llama.cpp contexts (the weights are mmapped
once and shared) and one :class:`~enclave.providers.scheduling.FairQueue`.
A worker task per slot takes the next job from the queue and runs its decode
loop on that slot's own thread, so the event loop never waits on the model.

The decode loop pushes events back with ``call_soon_threadsafe`` and checks
the job's cancel flag before every token: a client that disconnects stops
its generation within one token. Prompt rendering, tokenisation, grammar
planning and context-length checks happen at admission, on the event loop,
so that every request error is a clean 4xx before any byte is streamed.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import llama_cpp
from llama_cpp import Llama, LlamaGrammar

from enclave.chat.constraints import OutputPlan, plan_output
from enclave.chat.template import ChatTemplate
from enclave.errors import EnclaveError, InvalidRequest, ModelNotFound, ProviderError
from enclave.providers.base import (
    Capabilities,
    Finished,
    FinishReason,
    GenerationEvent,
    GenerationRequest,
    GenerationStream,
    Health,
    ModelCard,
    Provider,
    SamplingParams,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from enclave.providers.builtin import resolve_model_path
from enclave.providers.infill import tokenize_infill
from enclave.providers.scheduling import FairQueue
from enclave.runners.cpu import cpu_path, extra_buffer_types, read_cpu_flags
from enclave.settings import ModelConfig, RunnerConfig

log = logging.getLogger(__name__)

# llama.cpp's own defaults (and llama-server's); OpenAI has no equivalents.
TOP_K = 40
MIN_P = 0.05


@dataclass(eq=False)
class _Job:
    """One admitted generation, shared between its stream and a slot thread."""

    tokens: list[int]
    plan: OutputPlan
    sampling: SamplingParams
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[GenerationEvent | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def emit(self, event: GenerationEvent | BaseException) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class _LocalStream(GenerationStream):
    def __init__(self, job: _Job, queue: FairQueue[_Job]) -> None:
        self._job = job
        self._queue = queue

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[GenerationEvent]:
        try:
            while True:
                event = await self._job.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        self._job.cancelled.set()
        self._queue.discard(self._job)


class _StopMatcher:
    """Finds stop strings in streamed text, holding back possible partial matches."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return ``(text safe to emit, stopped)``."""
        self._pending += text
        if not self._stops:
            out, self._pending = self._pending, ""
            return out, False
        cut = min((i for i in (self._pending.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending = self._pending[:cut], ""
            return out, True
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


@dataclass
class RunnerStats:
    """Counters since start, for ``GET /api/providers`` and tests."""

    generations: int = 0
    cancelled: int = 0
    tokens_generated: int = 0


class LocalModel:
    """One GGUF model with its slots, queue and chat template."""

    def __init__(
        self, provider: str, config: ModelConfig, runner: RunnerConfig, chars_per_token: int = 8
    ) -> None:
        self.provider = provider
        self.config = config
        self.runner = runner
        # A prompt longer than this cannot fit the context, so it is refused untokenised.
        self.max_prompt_chars = config.n_ctx * chars_per_token
        assert config.path is not None, "settings require a path for local models"
        self.path = resolve_model_path(config.path)
        cores = (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
        self.threads = runner.threads or max(1, cores // runner.slots)
        self.queue: FairQueue[_Job] = FairQueue(runner.queue_size, consumers=runner.slots)
        self._slots: list[Llama] = []
        self._executor = ThreadPoolExecutor(runner.slots, thread_name_prefix=f"llama-{config.name}")
        self._workers: list[asyncio.Task[None]] = []
        self._busy = 0
        self.stats = RunnerStats()
        self.template: ChatTemplate | None = None
        self._strip_bos = ""
        self.extra_buffer_types: bool | None = None  # decided at load

    @property
    def tokenizer(self) -> Llama:
        return self._slots[0]

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    @property
    def busy(self) -> int:
        return self._busy

    def load(self) -> None:
        """Create the llama.cpp contexts (blocking; call from a thread)."""
        extra = extra_buffer_types(read_cpu_flags(), self.runner.extra_buffer_types)
        self.extra_buffer_types = extra.enabled
        with _model_params(use_extra_bufts=extra.enabled):
            for _ in range(self.runner.slots):
                self._slots.append(
                    Llama(
                        model_path=str(self.path),
                        n_ctx=self.config.n_ctx,
                        n_batch=self.runner.n_batch,
                        n_threads=self.threads,
                        n_threads_batch=self.threads,
                        verbose=False,
                    )
                )
        log.info(
            "%s: CPU path %s, llama.cpp extra buffer types %s (%s)",
            self.config.name,
            cpu_path(read_cpu_flags()),
            "on" if extra.enabled else "off",
            extra.reason,
        )
        llama = self._slots[0]
        vocab = llama._model.vocab
        bos = llama_cpp.llama_vocab_bos(vocab)
        eos = llama_cpp.llama_vocab_eos(vocab)
        self.template = ChatTemplate(
            llama.metadata.get("tokenizer.chat_template"),
            bos_token=llama._model.token_get_text(bos) if bos >= 0 else "",
            eos_token=llama._model.token_get_text(eos) if eos >= 0 else "",
        )
        # Templates that print bos_token would double it when tokenize() adds one too.
        adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self._strip_bos = self.template.bos_token if adds_bos else ""

    def start_workers(self) -> None:
        for slot in self._slots:
            self._workers.append(asyncio.create_task(self._serve(slot)))

    async def stop(self) -> None:
        for job in self.queue.drain():
            job.emit(ProviderError("The server is shutting down."))
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._executor.shutdown(wait=True, cancel_futures=True)
        for slot in self._slots:
            slot.close()

    def card(self) -> ModelCard:
        return ModelCard(
            id=self.config.name,
            provider=self.provider,
            capabilities=Capabilities(
                chat=True, completion=True, tools=True, json_schema=True, context_length=self.n_ctx
            ),
            created=int(self.path.stat().st_mtime),
        )

    # -- admission ----------------------------------------------------------

    def admit(self, request: GenerationRequest) -> _LocalStream:
        given = (
            len(request.prompt) + len(request.suffix or "")
            if request.prompt is not None
            else sum(len(message.content) for message in request.messages)
        )
        self._check_prompt_chars(given, request)  # before rendering a huge template
        if request.prompt is not None:
            prompt = request.prompt
            plan = plan_output(request.response_format, (), "none")
        else:
            assert self.template is not None
            plan = plan_output(request.response_format, request.tools, request.tool_choice)
            offered = request.tools if plan.tool_mode != "none" else ()
            prompt = self.template.render(request.messages, offered)
            if self._strip_bos and prompt.startswith(self._strip_bos):
                prompt = prompt[len(self._strip_bos) :]
        self._check_prompt_chars(len(prompt) + len(request.suffix or ""), request)
        if request.prompt is not None and request.suffix is not None:
            tokens = tokenize_infill(self.tokenizer, self.config.name, prompt, request.suffix)
        else:
            tokens = self.tokenizer.tokenize(prompt.encode(), add_bos=True, special=True)
        room = self.n_ctx - len(tokens)
        if room <= 0:
            raise InvalidRequest(
                f"The prompt is {len(tokens)} tokens; the model's context is {self.n_ctx}.",
                param="messages" if request.prompt is None else "prompt",
                code="context_length_exceeded",
            )
        wanted = request.sampling.max_tokens or self.config.max_tokens_default
        max_tokens = room if wanted is None else min(wanted, room)
        if plan.grammar is not None:
            self._check_grammar(plan.grammar)
        job = _Job(tokens, plan, request.sampling, max_tokens, asyncio.get_running_loop())
        self.queue.put_nowait(request.tenant, job)
        return _LocalStream(job, self.queue)

    def _check_prompt_chars(self, chars: int, request: GenerationRequest) -> None:
        """Refuse a prompt that cannot fit the context without tokenising it.

        Tokenising costs time and memory in proportion to the text; no token covers
        more than ``input_limits.chars_per_token`` characters in practice, so a
        longer prompt is over the context for certain.
        """
        if chars > self.max_prompt_chars:
            raise InvalidRequest(
                f"The prompt is {chars} characters; the model's context of {self.n_ctx} tokens "
                f"holds at most {self.max_prompt_chars} (input_limits.chars_per_token).",
                param="messages" if request.prompt is None else "prompt",
                code="context_length_exceeded",
            )

    def _check_grammar(self, grammar: str) -> None:
        sampler = llama_cpp.llama_sampler_init_grammar(
            self.tokenizer._model.vocab, grammar.encode(), b"root"
        )
        if not sampler:
            raise InvalidRequest("The requested output format could not be compiled to a grammar.")
        llama_cpp.llama_sampler_free(sampler)

    # -- serving ------------------------------------------------------------

    async def _serve(self, slot: Llama) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self.queue.get()
            if job.cancelled.is_set():
                continue
            started = time.monotonic()
            self._busy += 1
            try:
                finished = await loop.run_in_executor(self._executor, _decode, slot, job)
            except Exception as exc:  # the decode loop reports its own errors
                log.exception("decode worker failed")
                job.emit(ProviderError(f"The local model failed: {type(exc).__name__}"))
            else:
                if finished is not None:
                    self.stats.generations += 1
                    self.stats.cancelled += finished.finish_reason == "cancelled"
                    self.stats.tokens_generated += finished.usage.completion_tokens
            finally:
                self._busy -= 1
                self.queue.record_service_time(time.monotonic() - started)


_params_lock = threading.Lock()


@contextlib.contextmanager
def _model_params(*, use_extra_bufts: bool) -> Iterator[None]:
    """Make ``Llama()`` load with ``use_extra_bufts`` set as given.

    llama-cpp-python builds ``llama_model_params`` inside ``Llama.__init__`` from
    ``llama_model_default_params()`` and offers no argument for this field, so the
    default is wrapped while the contexts are created (one load at a time).
    """
    if use_extra_bufts:
        yield
        return
    bindings = llama_cpp.llama_cpp  # the module Llama.__init__ calls through
    defaults = bindings.llama_model_default_params

    def without_extra_bufts() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _params_lock:
        bindings.llama_model_default_params = without_extra_bufts
        try:
            yield
        finally:
            bindings.llama_model_default_params = defaults


def _decode(llama: Llama, job: _Job) -> Finished | None:
    """Run one generation on ``llama``; blocking, on the slot's thread."""
    try:
        return _decode_into(llama, job, job.emit)
    except EnclaveError as exc:
        job.emit(exc)
    except Exception as exc:
        log.exception("llama.cpp generation failed")
        job.emit(ProviderError(f"The local model failed: {type(exc).__name__}: {exc}"))
    return None


def _decode_into(
    llama: Llama, job: _Job, emit: Callable[[GenerationEvent | BaseException], None]
) -> Finished:
    sampling = job.sampling
    plan = job.plan
    llama.set_seed(
        sampling.seed & 0xFFFFFFFF if sampling.seed is not None else random.randrange(2**31)
    )
    grammar = LlamaGrammar.from_string(plan.grammar) if plan.grammar else None
    vocab = llama._model.vocab
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    stops = _StopMatcher(sampling.stop)
    text = ""  # everything generated (after stop handling)
    held = ""  # text not yet emitted because it may be a tool call
    emitted_any = False
    completion_tokens = 0
    finish: FinishReason = "length"
    generator = llama.generate(
        job.tokens,
        top_k=TOP_K,
        top_p=sampling.top_p,
        min_p=MIN_P,
        temp=sampling.temperature,
        repeat_penalty=1.0,
        frequency_penalty=sampling.frequency_penalty,
        presence_penalty=sampling.presence_penalty,
        grammar=grammar,
    )
    try:
        for token in generator:
            if job.cancelled.is_set():
                finish = "cancelled"
                break
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                finish = "stop"
                break
            completion_tokens += 1
            piece, stopped = stops.feed(decoder.decode(llama.detokenize([token])))
            text += piece
            if piece:
                if plan.buffers_output or (not emitted_any and plan.may_be_tool_call(text)):
                    held += piece
                else:
                    emit(TextDelta(held + piece))
                    held = ""
                    emitted_any = True
            if stopped:
                finish = "stop"
                break
            if completion_tokens >= job.max_tokens:
                break
    finally:
        generator.close()
    if finish != "cancelled":
        tail = stops.flush()
        text += tail
        held += tail
    usage = Usage(prompt_tokens=len(job.tokens), completion_tokens=completion_tokens)
    calls = plan.parse_tool_calls(text) if finish != "cancelled" else []
    if calls:
        for index, call in enumerate(calls):
            emit(ToolCallDelta(index, call))
        finish = "tool_calls" if finish == "stop" else finish
    elif held and not (finish == "length" and plan.may_be_tool_call(held)):
        # (A tool call cut off by max_tokens is dropped, never shown as markup:
        # the answer is content null with finish_reason "length".)
        emit(TextDelta(held))
    if plan.schema is not None and finish == "stop":
        try:
            plan.validate_json(text)
        except ValueError as exc:
            log.warning("grammar-constrained output failed validation: %s", exc)
    finished = Finished(finish, usage)
    emit(finished)
    return finished


class LlamaCppProvider(Provider):
    """Serves the GGUF models of one ``type: llamacpp`` provider entry."""

    def __init__(
        self,
        name: str,
        models: list[ModelConfig],
        runner: RunnerConfig,
        *,
        chars_per_token: int = 8,
    ) -> None:
        self.name = name
        self._models = {
            config.name: LocalModel(name, config, runner, chars_per_token) for config in models
        }

    async def start(self) -> None:
        for model in self._models.values():
            await asyncio.to_thread(model.load)
            model.start_workers()
            log.info(
                "loaded %s from %s (%d slots x %d threads)",
                model.config.name,
                model.path,
                model.runner.slots,
                model.threads,
            )

    async def close(self) -> None:
        for model in self._models.values():
            await model.stop()

    def models(self) -> list[ModelCard]:
        return [model.card() for model in self._models.values()]

    def model(self, name: str) -> LocalModel:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def queue_depth(self) -> dict[str, int]:
        return {name: len(model.queue) for name, model in self._models.items()}

    async def generate(self, request: GenerationRequest) -> GenerationStream:
        return self.model(request.model).admit(request)

    async def health(self) -> Health:
        loaded = all(model.template is not None for model in self._models.values())
        depth = sum(len(model.queue) for model in self._models.values())
        return Health(ok=loaded, detail="" if loaded else "models not loaded", queue_depth=depth)

    def describe(self) -> dict[str, Any]:
        return {
            name: {
                "slots": model.runner.slots,
                "threads": model.threads,
                "busy": model.busy,
                "queued": len(model.queue),
                "generations": model.stats.generations,
                "cancelled": model.stats.cancelled,
                "tokens_generated": model.stats.tokens_generated,
                "extra_buffer_types": model.extra_buffer_types,
            }
            for name, model in self._models.items()
        }

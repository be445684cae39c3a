"""Serving: continuous batching of concurrent requests on one loaded model.

    import transformer
    from transformer.serving import Engine

    with Engine(transformer.load("gpt2-dir"), kv_budget_tokens=65536) as engine:
        handle = engine.submit(ids, max_new_tokens=32, do_sample=True, seed=1)
        for column in handle:       # the new tokens as they are chosen
            ...
        ids = handle.result()       # what model.generate returns for the same arguments

Engine (transformer/serving/engine.py) runs every model computation in one scheduler thread:
iteration-level scheduling of the requests' decode steps (Orca, Yu et al. 2022; vLLM's
scheduler), token-budget packing of embedding requests (text-embeddings-inference); each
generation request's search is transformer.generation.generate itself, in a thread of its own,
over a proxy model (transformer/serving/proxy.py). docs/SERVING.md has the design."""
from .batch import step_many
from .engine import Engine
from .errors import EngineClosed, QueueFull, RequestCancelled
from .handle import Handle

__all__ = ["Engine", "Handle", "QueueFull", "EngineClosed", "RequestCancelled", "step_many"]

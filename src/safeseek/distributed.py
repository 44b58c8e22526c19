"""Several processes under `accelerate launch` (or `torchrun`): data parallel or FSDP.

Discovery and tuning split every global batch over the processes (process r takes rows r,
r + n, ...), divide each loss by the batch's whole count of labelled positions and sum the
gradients, so the global batch and the seed decide the result, not the number of processes.
The model is either replicated (data parallel) or, when the launch asks for FSDP, its decoder
layers, the decoder stack and an untied output embedding are sharded with PyTorch's
`fully_shard` (FSDP2); SafeSeek's masks and hooks stay replicated on every process.
"""

from __future__ import annotations

import os
import sys

import torch
from accelerate import PartialState
from accelerate.utils import reduce
from torch import nn

from safeseek.models.adapters import locate


def _state() -> PartialState:
    # Without `cpu`, accelerate takes a multi-process launch on a machine with no GPU for a
    # single process.
    return PartialState(cpu=not torch.cuda.is_available())


def rank_and_world() -> tuple[int, int]:
    state = _state()
    return state.process_index, state.num_processes


def is_main() -> bool:
    return _state().is_main_process


def fsdp_requested() -> bool:
    """Whether the launch asked for FSDP (accelerate reports CPU FSDP runs as MULTI_CPU, so
    the launcher's own variable decides)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def shards_weights() -> bool:
    """Whether this launch shards the model's weights: FSDP asked for, several processes."""
    return fsdp_requested() and rank_and_world()[1] > 1


def load_device() -> torch.device:
    """Where each process loads the model: its own accelerator, or the CPU under FSDP (each
    process then moves only its shard; safetensors are memory-mapped, so the page cache holds
    one copy of the checkpoint for all processes)."""
    if shards_weights():
        return torch.device("cpu")
    return _state().device


def shard_weights(model: nn.Module) -> None:
    """FSDP2 over every decoder layer, the decoder stack, and an untied output embedding.

    SafeSeek calls the decoder stack and the output embedding separately (logits only at
    labelled positions), so each is a root of its own and gathers its own weights.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    state = _state()
    mesh = init_device_mesh(state.device.type, (state.num_processes,))
    parts = locate(model)
    for layer in parts.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(parts.backbone, mesh=mesh)
    head = model.get_output_embeddings()
    if head.weight is not model.get_input_embeddings().weight:
        fully_shard(head, mesh=mesh)
    model.to(state.device)  # anything outside the sharded modules (e.g. a rotary cache)


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over all processes (itself with one process)."""
    if rank_and_world()[1] == 1:
        return tensor
    return reduce(tensor, reduction="sum")


def sum_gradients(params: list[nn.Parameter]) -> None:
    """Replace each gradient by its sum over processes (what DDP does, without its wrapper:
    the frozen model needs none)."""
    if rank_and_world()[1] == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad = reduce(p.grad, reduction="sum")


def is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "device_mesh") for p in model.parameters())


def end_launched_process() -> None:
    """End this process of a multi-process launch once all are done (no-op in a single one).

    Every process waits for the others, so the main one has written its files, closes the
    group, and exits without Python's interpreter shutdown: gloo's worker threads free
    finished collectives, whose tensors belong to Python, in the background, and one doing
    so while the interpreter shuts down aborts the process ("terminate called without an
    active exception", pytorch/pytorch#179291) and fails a run whose files are all written.
    FSDP keeps the group alive past `destroy_process_group` (its device mesh and DTensor's
    caches hold it), so its threads cannot be joined first.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict of an FSDP-sharded model, on the CPU of the main process (an
    empty dict elsewhere); every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)

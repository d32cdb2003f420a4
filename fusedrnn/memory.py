"""Memory the backends keep from one call to the next, and :func:`empty_cache`, which frees it."""

from . import _extension


def empty_cache():
    """Free what the ``cpu`` backend keeps between calls for the calls to come, as
    ``torch.cuda.empty_cache`` frees the caching allocator's unused blocks: the products
    prepared from the weights of inference calls (``csrc/cpu/prepared_cache.h``: the 64
    most recently used weights and layouts, up to 256 MiB of weights, their copies about as
    much again) and the workspace pool's cached blocks (``csrc/cpu/workspace_pool.h``: up to
    256 MiB). Nothing in use is freed; later calls prepare and allocate anew. A process that
    never loaded the extension has nothing to free (it is not loaded for this)."""
    cpu = _extension.CPU.loaded()
    if cpu is not None:
        cpu.clear_prepared_cache()
        cpu.release_workspaces()

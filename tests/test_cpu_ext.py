"""The CPU extension ``fusedrnn._cpu`` and the ``cpu`` backend.

Its kernels against the reference backend in float32 (the float64 comparisons with torch.nn
for every module option are in test_parity.py), the recurrence ops through ``opcheck``, the
argument checks of the C++ side, and what falls back to the reference backend and why.
"""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fusedrnn
from fusedrnn import _extension, testing
from fusedrnn.backends import BackendUnavailableError
from fusedrnn.backends.recurrence import CPU_SCHEMAS, SCHEMAS
from fusedrnn.ops import GATES

pytestmark = pytest.mark.requires_cpu_ext


@pytest.mark.parametrize("name", sorted({**SCHEMAS, **CPU_SCHEMAS}))
def test_extension_registers_a_cpu_kernel_for_each_op(name):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fusedrnn::{name}", "CPU")


# Sizes around the vector widths (8, 16 floats) and the packing threshold of csrc/cpu/blas.h.
CASES = [
    ("LSTM", {}, 33, 7, 3),
    ("LSTM", {"num_layers": 2, "bidirectional": True}, 17, 5, 4),
    ("LSTM", {}, 200, 4, 2),
    ("LSTM", {"proj_size": 5}, 33, 7, 3),
    ("LSTM", {"proj_size": 20, "num_layers": 2, "bidirectional": True}, 24, 9, 4),
    ("GRU", {}, 33, 7, 3),
    ("GRU", {"num_layers": 2, "bidirectional": True, "bias": False}, 17, 5, 4),
    ("GRU", {}, 220, 4, 2),
    ("RNN", {"nonlinearity": "tanh"}, 33, 7, 3),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2, "bidirectional": True}, 17, 5, 4),
]


@pytest.mark.parametrize("cell, kwargs, hidden, steps, batch", CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_float32_matches_the_reference_backend(cell, kwargs, hidden, steps, batch, packed):
    reference = getattr(fusedrnn, cell)(12, hidden, backend="reference", **kwargs)
    candidate = getattr(fusedrnn, cell)(12, hidden, backend="cpu", **kwargs)
    candidate.load_state_dict(reference.state_dict())
    x = (testing.make_packed(batch, steps, 12) if packed
         else testing.make_sequence(batch, steps, 12))
    hx = testing.make_state(reference, batch)
    out_ref, grads_ref = testing.outputs_and_grads(reference, x, hx)
    out, grads = testing.outputs_and_grads(candidate, x, hx)
    testing.assert_close_relative(out, out_ref, 1e-5, "outputs")
    testing.assert_close_relative(grads, grads_ref, 1e-5, "gradients")


@pytest.mark.parametrize("steps", [9, 1])
@pytest.mark.parametrize("cell, batch, hidden", [("LSTM", 8, 128), ("LSTM", 3, 200),
                                                 ("GRU", 8, 128), ("GRU", 3, 200),
                                                 ("RNN", 24, 128), ("RNN", 8, 200)])
def test_steps_split_across_threads_match_the_reference_in_float64(two_threads, cell, batch,
                                                                   hidden, steps):
    """Sizes where csrc/cpu/unit_split.h gives each thread a chunk of the hidden units
    (2^18 or more multiply-adds per step; 200: chunks of 112 and 88), with lengths and both
    directions. One step: the backward's loop is split too (9 steps overlap it with the
    products over all steps instead)."""
    work = batch * GATES[{"RNN": "rnn_tanh"}.get(cell, cell.lower())] * hidden**2
    assert 2**18 <= work <= 2**22 and hidden // 32 >= 2  # unit_split.h's bounds
    reference = getattr(fusedrnn, cell)(20, hidden, bidirectional=True, dtype=torch.float64,
                                        backend="reference")
    candidate = getattr(fusedrnn, cell)(20, hidden, bidirectional=True, dtype=torch.float64,
                                        backend="cpu")
    candidate.load_state_dict(reference.state_dict())
    x = testing.make_packed(batch, steps, 20, dtype=torch.float64)
    out_ref, grads_ref = testing.outputs_and_grads(reference, x)
    out, grads = testing.outputs_and_grads(candidate, x)
    testing.assert_close_relative(out, out_ref, 1e-12, "outputs")
    testing.assert_close_relative(grads, grads_ref, 1e-12, "gradients")


@pytest.mark.parametrize("threads", [1, 2])
def test_an_exception_in_a_split_team_is_raised_after_every_thread_stops(threads):
    """csrc/cpu/unit_split.h: an exception on one thread of a split loop's team (a product
    that fails, say) is raised to the caller once every thread has left the loop, each after
    the step it failed in; the process neither ends (an exception leaving an OpenMP thread
    terminates it) nor hangs at a barrier. Failing at every step, on one thread and on all of
    them, and after the loop."""

    cpu = _extension.CPU.load()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        assert cpu.unit_split_failure(6, -1, False) == (None, [6] * threads)
        for fail_step in range(6):
            message, done = cpu.unit_split_failure(6, fail_step, False)
            assert message == f"failed in step {fail_step}"
            # The failing thread (the last) stops before counting its step, the others after.
            assert done == [fail_step + 1] * (threads - 1) + [fail_step]
            message, done = cpu.unit_split_failure(6, fail_step, True)
            assert (message, done) == (f"failed in step {fail_step}", [fail_step] * threads)
        assert cpu.unit_split_failure(6, 6, False) == ("failed after the steps", [6] * threads)
        for _ in range(200):  # the failure raced against the other thread's step
            assert cpu.unit_split_failure(3, 1, False)[1] == [2] * (threads - 1) + [1]
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cell, batch, hidden, dtype", [("LSTM", 5, 32, torch.float32),
                                                     ("LSTM", 8, 128, torch.float32),
                                                     ("GRU", 8, 128, torch.float32),
                                                     ("LSTM", 5, 32, torch.float64),
                                                     ("LSTM", 8, 128, torch.bfloat16),
                                                     ("GRU", 8, 64, torch.bfloat16),
                                                     ("RNN", 8, 128, torch.float32),
                                                     ("RNN", 8, 64, torch.bfloat16)])
def test_calls_reuse_prepared_weights_only_while_they_are_unchanged(two_threads, monkeypatch,
                                                                    cell, batch, hidden,
                                                                    dtype):
    """csrc/cpu/prepared_cache.h: forward calls reuse the recurrent products prepared from
    W_hh from the third call on; each way of changing W_hh in place (through .data, which
    leaves the version alone, the whole tensor or every other element, whose signs a linear
    checksum let cancel; copy_ under no_grad, as an optimizer does; a new tensor set as
    .data) or calling at another batch size makes the next call prepare them again, and
    every output and gradient is the one a new copy of the weights gives. Training calls
    too. Unsplit and split sizes, all above the calls that read W_hh in place (row dots:
    test_small_calls_read_the_weights_in_place)."""
    from fusedrnn.backends import cpu as cpu_backend

    cpu = _extension.CPU.load()
    if dtype == torch.bfloat16:
        if not cpu.has_bf16_gemm():
            pytest.skip("this torch has no bfloat16 product (oneDNN's brgemm or MKL's)")
        # The bfloat16 kernels at these sizes (below their thresholds the weights are
        # widened into new tensors on every call, which no cache can key on).
        monkeypatch.setattr(cpu_backend, "BF16_KERNEL_FROM", 0)
        monkeypatch.setattr(cpu_backend, "BF16_BRGEMM_FROM", 0)
    module = getattr(fusedrnn, cell)(6, hidden, backend="cpu", dtype=dtype)
    x = testing.make_sequence(batch, 5, 6, dtype=dtype)
    weight = module.weight_hh_l0
    cpu.clear_prepared_cache()

    def call(expect_hit, inputs=x, train=False):
        hits, misses = cpu.prepared_cache_counts()
        with torch.set_grad_enabled(train):
            out = module(inputs)[0]
        after = cpu.prepared_cache_counts()
        assert after == ((hits + 1, misses) if expect_hit else (hits, misses + 1))
        fresh_module = copy.deepcopy(module)  # a copy's weights are new tensors: prepared anew
        with torch.set_grad_enabled(train):
            fresh = fresh_module(inputs)[0]
        assert torch.equal(out, fresh)
        if train:
            module.zero_grad()
            fresh_module.zero_grad()
            out.square().sum().backward()
            fresh.square().sum().backward()
            assert torch.equal(weight.grad, fresh_module.weight_hh_l0.grad)
        return out.detach()

    # A weight's first call at a version marks it, its second keeps the products, made from
    # values whose checksum later calls compare.
    call(False)
    call(False)
    first = call(True)
    assert torch.equal(call(True), first)
    with torch.no_grad():
        weight.data.uniform_(-0.5, 0.5)  # the version counter does not move: the checksum
    assert not torch.equal(call(False), first)
    call(True)
    weight.data.neg_()
    call(False)
    call(True)
    weight.data[:, 1::2].neg_()
    call(False)
    call(True)
    with torch.no_grad():
        weight.copy_(torch.randn_like(weight) * 0.1)  # a new version
    call(False)
    call(False)
    call(True)
    weight.data = torch.randn_like(weight) * 0.1  # another address
    call(False)
    call(False)
    call(True)
    call(False, testing.make_sequence(batch + 1, 5, 6, dtype=dtype))
    call(True)
    call(True, train=True)  # training at the same weights as the last inference call
    for _ in range(2):  # a training loop's optimizer step: a new version each call
        with torch.no_grad():
            weight.add_(weight.grad, alpha=-0.1)
        call(False, train=True)
    call(False, train=True)
    call(True, train=True)


def _checksum_definition(data):
    """prepared_cache.h's checksum in numpy's wrapping uint64 arithmetic: the sum of
    splitmix64's mix of each little-endian 64-bit word plus (its index + 1) times 2^64 over
    the golden ratio, the tail bytes zero-padded as one more word."""
    words = np.frombuffer(bytes(data) + bytes(8 - len(data) % 8), dtype="<u8")
    x = words + np.arange(1, len(words) + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return int(np.sum(x ^ (x >> np.uint64(31)), dtype=np.uint64))


@pytest.mark.parametrize("size", [0, 5, 8, 8003, 2**21 + 5])
@pytest.mark.parametrize("offset", [0, 3])
def test_weight_checksum_is_its_definition_and_sees_any_one_change(two_threads, size, offset):
    """The prepared weights' checksum (csrc/cpu/prepared_cache.cpp) equals its definition on
    aligned and unaligned bytes, on one thread and, from 2^16 words, summed over torch's
    threads; flipping any one bit changes it, and so do two sign flips, which cancelled in
    a linear sum."""
    cpu = _extension.CPU.load()
    storage = np.random.default_rng(size).integers(0, 256, size + 8, dtype=np.uint8)
    assert storage.ctypes.data % 8 == 0
    data = storage[offset:offset + size]
    expected = _checksum_definition(data)
    assert cpu.bytes_checksum(data) == expected
    if size == 0:
        return
    for byte in sorted({0, size // 2, size - 1, 8 * (size // 8) - 1}):
        if byte < 0:
            continue
        changed = data.copy()
        changed[byte] ^= np.uint8(1 << (byte % 8))
        assert cpu.bytes_checksum(changed) != expected
        assert cpu.bytes_checksum(changed) == _checksum_definition(changed)
    if size >= 16:
        changed = data.copy()
        changed[7] ^= np.uint8(0x80)  # float 1's sign, bit 63 of word 0
        changed[15] ^= np.uint8(0x80)  # float 3's sign, bit 63 of word 1
        assert cpu.bytes_checksum(changed) != expected


def test_projected_lstm_reuses_both_prepared_weights_while_unchanged():
    """With proj_size, W_hh's and W_hr's products are kept (two hits a call from the third
    on), and a change to W_hr through .data (the version unchanged) is seen."""
    cpu = _extension.CPU.load()
    cpu.clear_prepared_cache()
    module = fusedrnn.LSTM(6, 48, proj_size=20, backend="cpu")
    x = testing.make_sequence(3, 8, 6)  # 24 rows: above the row dots' calls

    def call(hits_expected):
        hits, misses = cpu.prepared_cache_counts()
        with torch.no_grad():
            out = module(x)[0]
            fresh = copy.deepcopy(module)(x)[0]
        after_hits, after_misses = cpu.prepared_cache_counts()
        assert after_hits - hits == hits_expected
        assert after_hits + after_misses - hits - misses == 4  # the copy's two misses too
        assert torch.equal(out, fresh)

    call(0)
    call(0)
    call(2)
    module.weight_hr_l0.data.neg_()  # the same version: made anew and kept at once
    call(1)
    call(2)


def test_prepared_weights_are_kept_for_the_current_version_only(two_threads):
    """csrc/cpu/prepared_cache.h: a training loop with two calls per update at another batch
    size each update (bucketed batches) keeps the products of the current weights only, not
    those of every earlier version at another batch size; inference at several batch sizes
    keeps one entry for each while the weights are unchanged."""
    cpu = _extension.CPU.load()
    cpu.clear_prepared_cache()
    module = fusedrnn.LSTM(6, 64, backend="cpu")
    weight_bytes = module.weight_hh_l0.nbytes
    optimizer = torch.optim.SGD(module.parameters(), lr=0.01)
    steps = 9  # 18 rows and more: above the row dots' calls
    for batch in (2, 3, 4, 2, 3, 4):
        x = testing.make_sequence(batch, steps, 6)
        optimizer.zero_grad()
        for _ in range(2):
            module(x)[0].sum().backward()
        assert cpu.prepared_cache_kept() == (1, weight_bytes)
        optimizer.step()
    with torch.no_grad():
        for batch in (2, 3, 4):
            for _ in range(2):
                module(testing.make_sequence(batch, steps, 6))
    assert cpu.prepared_cache_kept() == (3, 3 * weight_bytes)
    module(testing.make_sequence(2, steps, 6))[0].sum().backward()
    optimizer.step()
    module(testing.make_sequence(2, steps, 6))  # a new version: marked, nothing kept
    assert cpu.prepared_cache_kept() == (0, 0)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch, steps, hidden, input_size, dtype", [
    (1, 3, 37, 19, torch.float32),     # short rows: the lanes' zero-padded last chunk
    (1, 2, 256, 300, torch.float32),   # split by hidden units; threaded input projection
    (2, 8, 45, 7, torch.float32),      # 16 rows in all
    (4, 1, 64, 33, torch.float32),
    (3, 4, 20, 40, torch.float64),
    (1, 30, 128, 16, torch.float32),   # one row per step, however many steps
])
def test_small_calls_read_the_weights_in_place(two_threads, cell, batch, steps, hidden,
                                               input_size, dtype):
    """csrc/cpu/row_dots.h: a call of at most 16 rows in all, or of one batch row per step
    at hidden 128 and above, runs its products (input projection, recurrent, the projection's) as dot products of
    the weights' rows, read in place: nothing is prepared, so the cache counts no call and
    keeps nothing, and outputs and final states, inference and training, agree with the
    float64 oracle as the other paths do."""
    cpu = _extension.CPU.load()
    cpu.clear_prepared_cache()
    extra = {"proj_size": 11} if cell == "LSTM" and dtype == torch.float64 else {}
    module = getattr(fusedrnn, cell)(input_size, hidden, backend="cpu", dtype=dtype, **extra)
    oracle = copy.deepcopy(module).double()
    oracle.backend = "reference"
    x = testing.make_sequence(batch, steps, input_size, dtype=dtype)
    hx = testing.make_state(module, batch)
    hx64 = tuple(h.double() for h in hx) if isinstance(hx, tuple) else hx.double()
    counts = cpu.prepared_cache_counts()
    with torch.no_grad():
        inference = testing.flatten_outputs(module(x, hx))
        inference64 = testing.flatten_outputs(oracle(x.double(), hx64))
    outputs, grads = testing.outputs_and_grads(module, x, hx)
    outputs64, grads64 = testing.outputs_and_grads(oracle, x.double(), hx64)
    bound = 1e-12 if dtype == torch.float64 else 1e-5
    testing.assert_close_relative(inference, inference64, bound, "inference")
    testing.assert_close_relative(outputs, outputs64, bound, "training outputs")
    testing.assert_close_relative(grads, grads64, bound, "gradients")
    assert cpu.prepared_cache_counts() == counts
    assert cpu.prepared_cache_kept() == (0, 0)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("batch, steps, hidden, input_size", [(1, 3, 37, 19), (1, 2, 256, 300),
                                                              (4, 4, 64, 33), (1, 20, 512, 8)])
def test_small_bfloat16_calls_read_the_weights_in_place(two_threads, monkeypatch, cell, batch,
                                                        steps, hidden, input_size):
    """The bfloat16 kernels' small calls (as test_small_calls_read_the_weights_in_place's)
    take their products as bfloat16 row dots where the CPU has AVX512-BF16: nothing kept or
    counted by the cache there, and the low-precision rule against float64 either way."""
    from fusedrnn.backends import cpu as cpu_backend

    cpu = _extension.CPU.load()
    if not cpu.has_bf16_gemm():
        pytest.skip("this torch has no bfloat16 product (oneDNN's brgemm or MKL's)")
    monkeypatch.setattr(cpu_backend, "BF16_KERNEL_FROM", 0)  # the bfloat16 kernels at any size
    monkeypatch.setattr(cpu_backend, "BF16_BRGEMM_FROM", 0)
    cpu.clear_prepared_cache()
    counts = cpu.prepared_cache_counts()
    make = lambda dtype, backend: getattr(fusedrnn, cell)(input_size, hidden, dtype=dtype,
                                                          backend=backend)
    testing.assert_low_precision_rule(make(torch.float64, "reference"),
                                      make(torch.bfloat16, "reference"),
                                      make(torch.bfloat16, "cpu"),
                                      testing.make_sequence(batch, steps, input_size,
                                                            dtype=torch.float64))
    if cpu.bf16_row_dots():
        assert cpu.prepared_cache_counts() == counts
        assert cpu.prepared_cache_kept() == (0, 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_dots_take_empty_sizes(dtype):
    """The row dots' input projection with no inputs (zeros), no rows or no gates (no
    columns: nothing to divide into blocks; it once divided by zero)."""
    _extension.CPU.load()
    project = torch.ops.fusedrnn.input_projection
    out = project(torch.randn(1, 2, 0, dtype=dtype), torch.randn(8, 0, dtype=dtype))
    assert out.shape == (1, 2, 8) and not out.any()
    assert project(torch.randn(1, 0, 5, dtype=dtype), torch.randn(8, 5, dtype=dtype)).shape \
        == (1, 0, 8)
    assert project(torch.randn(1, 2, 5, dtype=dtype), torch.randn(0, 5, dtype=dtype)).shape \
        == (1, 2, 0)


ROW_DOTS_BITS = """
import sys, torch
from fusedrnn import _extension
_extension.CPU.load()
generator = torch.Generator().manual_seed(0)
results = []
for rows, inputs, gates in ((1, 7, 50), (3, 33, 130), (4, 200, 97), (5, 1, 9), (16, 256, 512)):
    x = torch.randn(1, rows, inputs, generator=generator)
    w = torch.randn(gates, inputs, generator=generator)
    results.append((x, w, torch.ops.fusedrnn.input_projection(x, w)))
torch.save(results, sys.argv[1])
"""


def test_row_dots_give_the_same_bits_with_and_without_avx512_intrinsics(tmp_path):
    """csrc/cpu/row_dots_avx512.cpp (where the CPU has AVX-512F and FUSEDRNN_CPU_MATH is
    auto) adds the same products in the same order as row_dots.h's portable code
    (FUSEDRNN_CPU_MATH=portable): the same bits, through the input projection of at most 16
    rows. Short last chunks (rows of 1, 7, 33, 200 elements), one to five batch rows (in
    groups of four and the rest), columns not a multiple of four, threaded column blocks;
    and both agree with float64."""
    results = {}
    for math in ("auto", "portable"):
        path = tmp_path / f"{math}.pt"
        env = dict(os.environ, FUSEDRNN_CPU_MATH=math, FUSEDRNN_CPU_GEMM="auto")
        run = subprocess.run([sys.executable, "-c", ROW_DOTS_BITS, str(path)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        results[math] = torch.load(path)
    for (x, w, auto), (_, _, portable) in zip(results["auto"], results["portable"]):
        assert torch.equal(auto, portable), tuple(x.shape) + tuple(w.shape)
        exact = x.double() @ w.double().t()
        testing.assert_close_relative([auto], [exact], 1e-5, f"rows {x.shape[1]}")


def test_kept_products_keep_no_weight_alive(two_threads):
    """A module's W_hh is freed with the module after training and inference calls, also
    where a product reads W_hh in place (row dots, or a call with no rows: nothing
    prepared), which the cache then does not keep (the other product paths: GEMM_MODE_CHECK
    below)."""
    for batch in (8, 3, 0):
        x = testing.make_sequence(8, 4, 6)[:, :batch]
        assert not testing.weight_outlives_module(lambda: fusedrnn.LSTM(6, 32, backend="cpu"),
                                                  x), batch


def test_calls_from_several_python_threads_share_prepared_weights_safely(two_threads):
    """Calls running at once on several Python threads (a server's workers) share the
    products kept by csrc/cpu/prepared_cache.h and the workspace pool, while calls at other
    batch sizes add and drop entries: each call's output, inference or training, is the one
    a call alone gives. Split and unsplit sizes, every cell, float32 and bfloat16."""
    import threading

    torch.manual_seed(0)
    modules = [getattr(fusedrnn, cell)(16, hidden, backend="cpu", dtype=dtype)
               for cell in ("LSTM", "GRU", "RNN") for hidden in (32, 256)
               for dtype in (torch.float32, torch.bfloat16)]
    inputs = [testing.make_sequence(batch, 6, 16) for batch in (8, 5)]

    def outputs(module, train):
        with torch.set_grad_enabled(train):
            return [module(x.to(module.weight_hh_l0.dtype))[0].detach() for x in inputs]

    expected = [outputs(module, False) for module in modules]
    failures = []

    def run(index):
        try:
            for call in range(12):
                got = outputs(modules[index], train=call % 2 == 1)
                if not all(map(torch.equal, got, expected[index])):
                    failures.append(index)
        except Exception as error:  # reported by the assert below
            failures.append(error)

    workers = [threading.Thread(target=run, args=(i % len(modules),)) for i in range(24)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []


@pytest.mark.parametrize("value", [-100.0, -20.0, -1e-3, 0.0, 1e-3, 0.6, 20.0, 100.0])
def test_saturated_and_tiny_gates_match_torch(value):
    """The vectorised sigmoid and tanh of csrc/cpu/cpu_math.h at the ends of their range."""
    module = fusedrnn.LSTM(1, 16, bias=False, backend="cpu")
    with torch.no_grad():
        module.weight_ih_l0.fill_(1.0)
        module.weight_hh_l0.zero_()
    x = torch.full((3, 2, 1), value)
    out, (h, c) = module(x)
    ref, (rh, rc) = testing.torch_twin(module)(x)
    torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-30)
    torch.testing.assert_close(c, rc, rtol=2e-6, atol=1e-30)


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_saturated_gates_are_exact_and_pass_no_gradient(cell):
    """A gate saturated at 1 is exactly 1, as in torch, so its derivative is exactly 0; a
    sigmoid 1 ulp short of it passed about 6e-8 of every large input or state into the
    weight gradients (an h_0 of 1e4 made the GRU's weight gradient 50x too large)."""
    module = getattr(fusedrnn, cell)(1, 1, bias=False, backend="cpu")
    with torch.no_grad():
        module.weight_ih_l0.fill_(1.0)
        module.weight_hh_l0.zero_()
    out, states = testing.outputs_and_grads(module, torch.full((1, 1, 1), 100.0))
    ref, ref_grads = testing.outputs_and_grads(testing.torch_twin(module),
                                               torch.full((1, 1, 1), 100.0))
    assert all(torch.equal(a, b) for a, b in zip(out, ref))
    assert torch.equal(module.weight_ih_l0.grad, torch.zeros(module.weight_ih_l0.shape))

    reference = getattr(fusedrnn, cell)(2, 3, dtype=torch.float64)
    module = getattr(fusedrnn, cell)(2, 3, backend="cpu")
    module.load_state_dict(reference.state_dict())
    states = list(testing.make_state(reference, 2)) if cell == "LSTM" else [
        testing.make_state(reference, 2)]
    states[0][0, 0] = 1e4
    x = testing.make_sequence(2, 4, 2, dtype=torch.float64)
    as_hx = tuple if cell == "LSTM" else (lambda s: s[0])
    _, grads = testing.outputs_and_grads(module, x.float(), as_hx([s.float() for s in states]))
    _, grads64 = testing.outputs_and_grads(reference, x, as_hx(states))
    testing.assert_close_relative(grads, grads64, 2e-5, "gradients at a large h_0")


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_subnormal_states_are_stored_as_zero(cell):
    """A state that would be subnormal (here half of a c_0 or h_0 of 2e-38) is stored as 0,
    where torch keeps it: every later operation on it would take x86's slow path."""
    torch.set_flush_denormal(False)  # torch's default, which the apps (and their tests) turn on
    module = getattr(fusedrnn, cell)(1, 16, bias=False, backend="cpu")
    with torch.no_grad():
        module.weight_ih_l0.zero_()
        module.weight_hh_l0.zero_()
    state = torch.full((1, 2, 16), 2e-38)
    hx = (torch.zeros(1, 2, 16), state) if cell == "LSTM" else state
    x = torch.zeros(1, 2, 1)
    out, final = module(x, hx)
    _, ref_final = testing.torch_twin(module)(x, hx)
    kept = ref_final[1] if cell == "LSTM" else ref_final  # c, or h: 1e-38 in torch
    assert (kept.abs() > 0).all() and (kept.abs() < 1.17549435e-38).all()
    for tensor in [out] + list(final if cell == "LSTM" else [final]):
        assert (tensor == 0).all()


@pytest.mark.parametrize("cell, kwargs", [("GRU", {}), ("RNN", {"nonlinearity": "relu"}),
                                          ("RNN", {"nonlinearity": "tanh"})])
def test_nan_input_gives_nan_like_torch(cell, kwargs):
    module = getattr(fusedrnn, cell)(3, 8, backend="cpu", **kwargs)
    x = torch.randn(4, 2, 3)
    x[1, 0, 0] = float("nan")
    out, _ = module(x)
    ref, _ = testing.torch_twin(module)(x)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()


def _lstm_args():
    """The arguments of ``fusedrnn::lstm_recurrence_fwd`` but the flags, by name."""
    return {"xproj": torch.randn(5, 3, 32), "bias": torch.randn(32), "w_hh": torch.randn(32, 8),
            "h0": torch.randn(3, 8), "c0": torch.randn(3, 8), "lengths": torch.tensor([5, 2, 4])}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_lstm_recurrence_ops(reverse, bias):
    args = _lstm_args()
    if not bias:
        args["bias"] = None
    for save in (False, True):
        torch.library.opcheck(torch.ops.fusedrnn.lstm_recurrence_fwd.default,
                              (*args.values(), reverse, save))
    _, _, _, gates, cells = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), reverse, True)
    grad_y, grad_h, grad_c = torch.randn(5, 3, 8), torch.randn(3, 8), torch.randn(3, 8)
    torch.library.opcheck(torch.ops.fusedrnn.lstm_recurrence_bwd.default,
                          (grad_y, grad_h, grad_c, args["w_hh"], args["c0"], args["lengths"],
                           gates, cells, reverse))


@pytest.mark.parametrize("relu", [False, True])
def test_opcheck_rnn_recurrence_ops(relu):
    xproj, w_hh, h0 = torch.randn(5, 3, 8), torch.randn(8, 8), torch.randn(3, 8)
    lengths = torch.tensor([5, 2, 4])
    torch.library.opcheck(torch.ops.fusedrnn.rnn_recurrence_fwd.default,
                          (xproj, torch.randn(8), w_hh, h0, lengths, True, relu))
    y, _ = torch.ops.fusedrnn.rnn_recurrence_fwd(xproj, None, w_hh, h0, lengths, True, relu)
    torch.library.opcheck(torch.ops.fusedrnn.rnn_recurrence_bwd.default,
                          (torch.randn(5, 3, 8), torch.randn(3, 8), w_hh, y, lengths, True, relu))


@pytest.mark.parametrize("bias", [False, True])
def test_opcheck_gru_recurrence_ops(bias):
    xproj, w_hh, h0 = torch.randn(5, 3, 24), torch.randn(24, 8), torch.randn(3, 8)
    b_ih, b_hh = (torch.randn(24), torch.randn(24)) if bias else (None, None)
    lengths = torch.tensor([5, 2, 4])
    for save in (False, True):
        torch.library.opcheck(torch.ops.fusedrnn.gru_recurrence_fwd.default,
                              (xproj, b_ih, w_hh, b_hh, h0, lengths, False, save))
    y, _, gates, hidden_n = torch.ops.fusedrnn.gru_recurrence_fwd(xproj, b_ih, w_hh, b_hh, h0,
                                                                  lengths, False, True)
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]]).contiguous()
    torch.library.opcheck(torch.ops.fusedrnn.gru_recurrence_bwd.default,
                          (torch.randn(5, 3, 8), torch.randn(3, 8), w_hh, h_prev, lengths, gates,
                           hidden_n, False))


@pytest.mark.parametrize("name, value, message", [
    ("w_hh", torch.randn(32, 7), r"w_hh should have shape \[28, 7\], got \[32, 7\]"),
    ("h0", torch.randn(2, 8), r"h0 should have shape \[3, 8\]"),
    ("w_hh", torch.randn(32, 8, dtype=torch.float64), "w_hh has dtype Double, expected Float"),
    ("w_hh", torch.randn(8, 32).t(), "w_hh must be contiguous"),
    ("bias", torch.randn(31), r"bias should have shape \[32\]"),
    ("lengths", torch.tensor([5, 2]), r"lengths must be a contiguous int64 tensor of shape \(3\)"),
    ("lengths", torch.tensor([5.0, 2.0, 4.0]), "lengths must be a contiguous int64"),
])
def test_bad_arguments_name_the_argument(name, value, message):
    args = _lstm_args()
    args[name] = value
    with pytest.raises(RuntimeError, match="fusedrnn cpu backend: " + message):
        torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)


def test_explicit_cpu_backend_refuses_what_it_cannot_run():
    with pytest.raises(BackendUnavailableError, match="need CPU tensors, got meta"):
        fusedrnn.GRU(4, 8, backend="cpu", device="meta")(torch.randn(3, 2, 4, device="meta"))


def test_compiled_module_matches_eager():
    module = fusedrnn.LSTM(6, 10, num_layers=2, backend="cpu")
    x = testing.make_sequence(3, 5, 6)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out, grads = testing.outputs_and_grads(compiled, x)
    ref, ref_grads = testing.outputs_and_grads(module, x)
    testing.assert_close_relative(out, ref, 1e-6, "outputs")
    testing.assert_close_relative(grads, ref_grads, 1e-6, "gradients")


GEMM_MODE_CHECK = """
import os, torch, fusedrnn
torch.manual_seed(0)  # a subprocess: conftest's seeds do not reach it
avx512 = "avx512f" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
from fusedrnn import _extension, testing
from fusedrnn.backends import cpu as cpu_backend
# One step: the backward's time loop is split by hidden units too (its products read
# W_hh's column blocks in place), where longer ones overlap the products over all steps.
for cell, batch, hidden, steps in (("LSTM", 3, 200, 5), ("LSTM", 3, 200, 1), ("GRU", 2, 220, 5),
                                   ("LSTM", 2, 9, 5), ("GRU", 4, 12, 5), ("RNN", 3, 400, 5),
                                   ("RNN", 2, 10, 5)):
    for dtype, bound in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        reference = getattr(fusedrnn, cell)(6, hidden, dtype=dtype, backend="reference")
        candidate = getattr(fusedrnn, cell)(6, hidden, dtype=dtype, backend="cpu")
        candidate.load_state_dict(reference.state_dict())
        x = testing.make_packed(batch, steps, 6, dtype=dtype)
        out_ref, grads_ref = testing.outputs_and_grads(reference, x)
        out, grads = testing.outputs_and_grads(candidate, x)
        testing.assert_close_relative(out, out_ref, bound, f"{cell} {hidden} outputs")
        testing.assert_close_relative(grads, grads_ref, bound, f"{cell} {hidden} gradients")
# The bfloat16 kernels at every size, on the product this path gives them, else widened.
extension = _extension.CPU.load()
assert extension.avx512_rows() or os.environ["FUSEDRNN_CPU_MATH"] != "auto" or not avx512
assert not extension.avx512_rows() or os.environ["FUSEDRNN_CPU_MATH"] == "auto"
cpu_backend.BF16_KERNEL_FROM = cpu_backend.BF16_BRGEMM_FROM = 0
ops = torch.ops.fusedrnn
for cell, op in (("LSTM", "lstm"), ("GRU", "gru"), ("RNN", "rnn")):
    forward, backward = (getattr(ops, f"{op}_recurrence_{way}") for way in ("fwd", "bwd"))
    for batch, hidden in ((4, 200), (2, 25)):  # threaded; odd K (MKL's forward product)
        seen = []
        for way, original in (("fwd", forward), ("bwd", backward)):
            setattr(ops, f"{op}_recurrence_{way}", (lambda original: lambda first, *args:
                    seen.append(first.dtype) or original(first, *args))(original))  # records
        make = lambda dtype, backend: getattr(fusedrnn, cell)(6, hidden, dtype=dtype,
                                                              backend=backend)
        testing.assert_low_precision_rule(make(torch.float64, "reference"),
                                          make(torch.bfloat16, "reference"),
                                          make(torch.bfloat16, "cpu"),
                                          testing.make_packed(batch, 5, 6, dtype=torch.float64))
        kernel = (hidden % 2 == 0 and extension.bf16_on_brgemm()) or extension.bf16_on_mkl()
        assert seen and set(seen) == {torch.bfloat16 if kernel else torch.float32}, (cell, seen)
    setattr(ops, f"{op}_recurrence_fwd", forward)
    setattr(ops, f"{op}_recurrence_bwd", backward)
# Kept products keep no weight alive on this path (the aten path's and MKL's bfloat16
# product read W_hh in place: the cache does not keep them).
for cell in ("LSTM", "GRU", "RNN"):
    for dtype in (torch.float32, torch.bfloat16):
        make = lambda: getattr(fusedrnn, cell)(6, 32, dtype=dtype, backend="cpu")
        x = testing.make_sequence(3, 4, 6, dtype=dtype)
        assert not testing.weight_outlives_module(make, x), (cell, dtype)
for steps, batch, inputs, gates in ((50, 23, 19, 300), (3, 4, 5, 12), (50, 23, 0, 300)):
    x, w = torch.randn(steps, batch, inputs), torch.randn(gates, inputs)  # tiled, small, empty
    exact = (x.double() @ w.double().t()).float()
    projected = torch.ops.fusedrnn.input_projection(x, w)
    testing.assert_close_relative([projected], [exact], 1e-5, f"input projection {steps}x{batch}")
print("checked")
"""


@pytest.mark.parametrize("mode, math", [("brgemm", "auto"), ("mkl", "auto"),
                                        ("unpacked", "auto"), ("aten", "auto"),
                                        ("auto", "portable")])
def test_every_product_and_math_path_matches_the_reference(mode, math):
    """Each FUSEDRNN_CPU_GEMM path: brgemm (oneDNN's kernel, auto's float32 choice on
    non-Intel x86), mkl (MKL, packed at these sizes: auto's choice elsewhere), unpacked and
    aten (the path of a torch without BLAS symbols); and FUSEDRNN_CPU_MATH=portable, the
    rows without AVX-512 intrinsics (auto's choice on CPUs without AVX-512F). Every other
    test runs auto's choices."""

    if mode == "brgemm" and not _extension.CPU.load().brgemm_built():
        pytest.skip("this torch's ATen has no at::native::cpublas::brgemm for float32")
    env = dict(os.environ, FUSEDRNN_CPU_GEMM=mode, FUSEDRNN_CPU_MATH=math)
    run = subprocess.run([sys.executable, "-c", GEMM_MODE_CHECK], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0 and "checked" in run.stdout, run.stderr[-3000:]


def test_unknown_product_path_is_refused():
    env = dict(os.environ, FUSEDRNN_CPU_GEMM="sideways")
    script = "import torch, fusedrnn; fusedrnn.LSTM(3, 4, backend='cpu')(torch.randn(2, 1, 3))"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0
    assert "FUSEDRNN_CPU_GEMM must be auto, brgemm, mkl, unpacked or aten" in run.stderr
    # The extension's queries raise it as a Python error, and fusedrnn info reports it.
    query = "from fusedrnn import _extension; _extension.CPU.load().bf16_on_brgemm()"
    run = subprocess.run([sys.executable, "-c", query], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1 and "RuntimeError: FUSEDRNN_CPU_GEMM must be" in run.stderr
    run = subprocess.run([sys.executable, "-m", "fusedrnn.cli", "info"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "products              none: FUSEDRNN_CPU_GEMM must" in run.stdout


# The LSTM's, the RNN's and the GRU's units split (batch 1: 2^18 multiply-adds per step).
@pytest.mark.parametrize("cell, hidden", [("GRU", 4), ("LSTM", 256), ("RNN", 512),
                                          ("GRU", 296)])
def test_unknown_math_path_is_refused(cell, hidden):
    env = dict(os.environ, FUSEDRNN_CPU_MATH="sideways")
    script = (f"import torch, fusedrnn; fusedrnn.{cell}(3, {hidden}, backend='cpu')"
              "(torch.randn(2, 1, 3))")
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "RuntimeError: FUSEDRNN_CPU_MATH must be auto or portable, got 'sideways'" in run.stderr
    run = subprocess.run([sys.executable, "-m", "fusedrnn.cli", "info"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "cell math             none: FUSEDRNN_CPU_MATH must" in run.stdout


def test_edge_cases_again_on_the_portable_rows():
    """The saturation, tiny-gate, subnormal and NaN tests above under FUSEDRNN_CPU_MATH=portable:
    where the CPU has AVX-512F the rest of the suite runs the AVX-512 rows."""

    if not _extension.CPU.load().avx512_rows():
        pytest.skip("the suite runs the portable rows here already")
    env = dict(os.environ, FUSEDRNN_CPU_MATH="portable")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "saturated or nan_input or subnormal"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and " passed" in run.stdout, run.stdout[-3000:]


def test_workspaces_are_reused_and_never_shared():
    """csrc/cpu/workspace_pool.h: a freed workspace's memory serves the next one of its
    size, and live workspaces never share memory."""
    args = _lstm_args()
    first = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)[3]
    second = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)[3]
    assert first.data_ptr() != second.data_ptr()
    address = second.data_ptr()
    del second
    third = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)[3]
    assert third.data_ptr() == address
    torch.testing.assert_close(third, first, rtol=0, atol=0)


def test_profiler_sees_the_workspaces():
    args = _lstm_args()
    with torch.profiler.profile(profile_memory=True) as prof:
        gates = torch.ops.fusedrnn.lstm_recurrence_fwd(*args.values(), False, True)[3]
    op = next(e for e in prof.key_averages() if e.key == "fusedrnn::lstm_recurrence_fwd")
    assert op.self_cpu_memory_usage >= gates.numel() * gates.element_size()


def test_input_projection_op_matches_a_product_and_names_bad_arguments():
    x, w_ih = torch.randn(5, 3, 7), torch.randn(12, 7)
    torch.library.opcheck(torch.ops.fusedrnn.input_projection.default, (x, w_ih))
    out = torch.ops.fusedrnn.input_projection(x, w_ih)
    torch.testing.assert_close(out, torch.einsum("tbi,gi->tbg", x, w_ih))
    with pytest.raises(RuntimeError, match=r"fusedrnn cpu backend: w_ih should have shape \[12, 7\]"):
        torch.ops.fusedrnn.input_projection(x, torch.randn(12, 6))

"""The ``cpu`` backend's weights: the prepared products kept from one call to the next while
the weights are unchanged (``csrc/cpu/prepared_cache.h``, its checksum and its thread safety),
and small calls that read the weights in place instead (the row dots of
``csrc/cpu/row_dots*.{h,cpp}``)."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fusedrnn
from fusedrnn import _extension, testing

pytestmark = pytest.mark.requires_cpu_ext


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
    .data) makes the next call prepare them again, and every output and gradient is the one
    a new copy of the weights gives; a call at another batch size reuses them. Training
    calls too. Unsplit and split sizes, all above the calls that read W_hh in place (row
    dots: test_small_calls_read_the_weights_in_place)."""
    from fusedrnn.backends import cpu as cpu_backend

    cpu = _extension.CPU.load()
    if dtype == torch.bfloat16:
        if not cpu.has_bf16_gemm():
            pytest.skip("this torch has no bfloat16 product (oneDNN's brgemm or MKL's)")
        if cell != "LSTM" and not cpu.bf16_on_brgemm():
            # csrc/cpu/prepared_cache.h: nothing is prepared, so nothing is kept
            pytest.skip("on MKL's bfloat16 product the GRU's and RNN's unsplit product at "
                        "these sizes reads W_hh in place")
        # The bfloat16 kernels at these sizes (below their thresholds the weights are
        # widened into new tensors on every call, which no cache can key on).
        monkeypatch.setattr(cpu_backend, "BF16_KERNEL_FROM", 0)
        monkeypatch.setattr(cpu_backend, "BF16_BRGEMM_FROM", 0)
        monkeypatch.setattr(cpu_backend, "BF16_AMX_FROM", 0)
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
    call(True, testing.make_sequence(batch + 1, 5, 6, dtype=dtype))  # any batch size
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
    keeps one entry for all of them while the weights are unchanged."""
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
    assert cpu.prepared_cache_kept() == (1, weight_bytes)
    module(testing.make_sequence(2, steps, 6))[0].sum().backward()
    optimizer.step()
    module(testing.make_sequence(2, steps, 6))  # a new version: marked, nothing kept
    assert cpu.prepared_cache_kept() == (0, 0)


def test_input_projection_keeps_transposed_w_ih_while_unchanged(two_threads):
    """csrc/cpu/input_projection.cpp: where the input projection runs on brgemm (from 64 rows),
    it reads W_ih^T, kept in the same cache as W_hh's products: marked on a weight's first
    call, kept on its second, reused from the third; an in-place change through .data (the
    version unchanged) is seen by the next call."""
    cpu = _extension.CPU.load()
    if not cpu.f32_on_brgemm():
        pytest.skip("float32 products run on MKL here: the projection reads W_ih in place")
    module = fusedrnn.LSTM(6, 32, backend="cpu")
    x = testing.make_sequence(8, 10, 6)  # 80 rows
    cpu.clear_prepared_cache()
    counts = []
    with torch.no_grad():
        for _ in range(3):
            hits, misses = cpu.prepared_cache_counts()
            first = module(x)[0]
            after = cpu.prepared_cache_counts()
            counts.append((after[0] - hits, after[1] - misses))
        assert counts == [(0, 2), (0, 2), (2, 0)]  # W_hh's products and W_ih^T
        weights = module.weight_hh_l0.nbytes + module.weight_ih_l0.nbytes
        assert cpu.prepared_cache_kept() == (2, weights)
        module.weight_ih_l0.data.uniform_(-0.5, 0.5)
        out = module(x)[0]
        assert torch.equal(out, copy.deepcopy(module)(x)[0]) and not torch.equal(out, first)


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
    mode = os.environ.get("FUSEDRNN_CPU_GEMM") or "auto"
    if mode != "auto":
        pytest.skip(f"FUSEDRNN_CPU_GEMM={mode} runs every product on that path: row dots are "
                    "auto's (the results were checked)")
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
    monkeypatch.setattr(cpu_backend, "BF16_AMX_FROM", 0)
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


def test_calls_at_other_batch_sizes_share_the_prepared_weights(two_threads):
    """A server's calls at varying batch sizes: what is prepared from W_hh serves every batch
    size (but where MKL packs it for one: weights of 2^17 elements and more, off brgemm), so
    the cache keeps fewer entries than one per batch size and layer (a 52 MiB model kept
    1.3 GiB), a layout (split of the units, W_ih^T from 64 rows) each, and from the third
    round on every call hits them; each output is a fresh copy's of the module."""
    cpu = _extension.CPU.load()
    torch.manual_seed(0)
    module = fusedrnn.LSTM(16, 64, num_layers=2, backend="cpu")
    batches = (8, 9, 12, 20, 33)
    inputs = [testing.make_sequence(batch, 5, 16) for batch in batches]
    with torch.no_grad():
        expected = [copy.deepcopy(module)(x)[0] for x in inputs]
        cpu.clear_prepared_cache()
        for _ in range(2):  # a layout's second call at a version keeps its products
            for x in inputs:
                module(x)
        kept = cpu.prepared_cache_kept()
        misses = cpu.prepared_cache_counts()[1]
        for x, out in zip(inputs, expected):
            assert torch.equal(module(x)[0], out), x.shape[1]
    assert cpu.prepared_cache_counts()[1] == misses and cpu.prepared_cache_kept() == kept
    assert 2 <= kept[0] < 2 * len(batches)


def test_kept_products_keep_no_weight_alive(two_threads):
    """A module's W_hh is freed with the module after training and inference calls, also
    where a product reads W_hh in place (row dots, or a call with no rows: nothing
    prepared), which the cache then does not keep (the other product paths: GEMM_MODE_CHECK
    below)."""
    for batch in (8, 3, 0):
        x = testing.make_sequence(8, 4, 6)[:, :batch]
        assert not testing.weight_outlives_module(lambda: fusedrnn.LSTM(6, 32, backend="cpu"),
                                                  x), batch


def test_a_freed_models_products_go_at_the_next_call(two_threads):
    """A server that deletes one model and goes on with another, whose calls all hit the
    cache, does not keep the deleted model's products."""
    cpu = _extension.CPU.load()
    cpu.clear_prepared_cache()
    kept, gone = (fusedrnn.LSTM(6, 64, backend="cpu") for _ in range(2))
    x = testing.make_sequence(4, 9, 6)
    with torch.no_grad():
        for module in (kept, gone, kept, gone):
            module(x)
        assert cpu.prepared_cache_kept() == (2, 2 * kept.weight_hh_l0.nbytes)
        del module, gone
        hits = cpu.prepared_cache_counts()[0]
        kept(x)
    assert cpu.prepared_cache_counts()[0] == hits + 1
    assert cpu.prepared_cache_kept() == (1, kept.weight_hh_l0.nbytes)


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_modules_with_kept_products_convert_and_load_by_swapping_tensors(two_threads, cell):
    """Under torch.__future__'s swap_module_params_on_conversion, ``.double()``, ``.to()`` and
    ``load_state_dict`` swap each parameter's tensor for a new one (torch.utils.swap_tensors),
    which refuses a tensor anything holds weakly: the cache holds the weights' storages, not
    the tensors, so a module that has made and kept products converts and loads as
    torch.nn's does (it failed half-way, some weights converted and some not), and its calls
    afterwards give torch.nn's outputs."""
    torch.manual_seed(0)
    is_cell = cell.endswith("Cell")
    ours = getattr(fusedrnn, cell)(6, 32, backend="cpu")
    theirs = getattr(torch.nn, cell)(6, 32)
    theirs.load_state_dict(ours.state_dict())
    # a cell's call of 32 rows, as a layer's of 4 steps of 8 (fewer read W_hh in place)
    x = testing.make_sequence(32, 1, 6)[0] if is_cell else testing.make_sequence(8, 4, 6)
    fusedrnn._cpu.clear_prepared_cache()
    swap = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        with torch.no_grad():
            for _ in range(3):  # the products are kept from the second call on
                ours(x)
        assert fusedrnn._cpu.prepared_cache_kept()[0] > 0
        for module in (ours, theirs):
            module.double()
        with torch.no_grad():
            _assert_same(ours, theirs, x.double(), "converted")
            ours(x.double())
            state = {name: torch.randn_like(value) for name, value in ours.state_dict().items()}
            ours.load_state_dict(state)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swap)
    # (torch.nn's RNNs, which hold their weights weakly, cannot load by swapping)
    theirs.load_state_dict(state)
    with torch.no_grad():
        _assert_same(ours, theirs, x.double(), "loaded")


def _assert_same(ours, theirs, x, label):
    def first(result):
        return result[0] if isinstance(result, tuple) else result

    testing.assert_close_relative([first(ours(x))], [first(theirs(x))], 1e-12, label)


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

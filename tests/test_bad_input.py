"""Bad input gets torch's exception type (or a clearer one) with a message naming the argument."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

import fusedrnn


def _both(name, *args, **kwargs):
    return getattr(fusedrnn, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)


def _raises_like_torch(ours, theirs, call, match):
    with pytest.raises(Exception) as torch_error:
        call(theirs)
    with pytest.raises(type(torch_error.value), match=match):
        call(ours)


CASES = [
    ("LSTM", lambda m: m(torch.randn(2, 3, 4, 1)), r"Expected input to be 2D or 3D, got 4D"),
    ("GRU", lambda m: m(torch.randn(5)), r"Expected input to be 2D or 3D, got 1D"),
    ("LSTM", lambda m: m(torch.randn(3, 2, 5)), r"input.size\(-1\) must be equal to input_size. Expected 4, got 5"),
    ("RNN", lambda m: m(torch.randn(0, 2, 4)), r"sequence length to be larger than 0"),
    ("LSTM", lambda m: m(torch.randn(3, 2, 4), (torch.randn(1, 3, 6), torch.randn(1, 2, 6))),
     r"hx\[0\] \(h_0\) size \(1, 2, 6\), got \[1, 3, 6\]"),
    ("LSTM", lambda m: m(torch.randn(3, 2, 4), (torch.randn(1, 2, 6), torch.randn(2, 2, 6))),
     r"hx\[1\] \(c_0\) size \(1, 2, 6\), got \[2, 2, 6\]"),
    ("GRU", lambda m: m(torch.randn(3, 2, 4), torch.randn(1, 3, 6)), r"hx size \(1, 2, 6\), got \[1, 3, 6\]"),
    ("LSTM", lambda m: m(torch.randn(3, 4), (torch.randn(1, 2, 6), torch.randn(1, 2, 6))),
     r"unbatched 2-D input, hx\[0\] \(h_0\) should also be 2-D"),
    ("LSTM", lambda m: m(torch.randn(3, 2, 4, dtype=torch.float64)), r"input dtype \(torch.float64\) does not match weight dtype"),
    ("LSTM", lambda m: m(torch.randn(3, 2, 4), (torch.randn(1, 2, 6, dtype=torch.float64),
                                                torch.randn(1, 2, 6))),
     r"hx\[0\] \(h_0\) dtype \(torch.float64\) does not match"),
    ("GRU", lambda m: m.to("meta")(torch.randn(3, 2, 4)),
     r"input is on cpu but the weights are on meta"),
    ("GRU", lambda m: m(torch.randn(3, 2, 4), torch.randn(1, 2, 6, device="meta")),
     r"hx is on meta but input is on cpu"),
]


@pytest.mark.parametrize("name, call, match", CASES)
def test_same_exception_type_as_torch_and_a_clear_message(name, call, match):
    ours, theirs = _both(name, 4, 6)
    _raises_like_torch(ours, theirs, call, match)


def test_hx_must_be_a_pair_for_lstm():
    with pytest.raises(TypeError, match=r"hx must be a tuple \(h_0, c_0\)"):
        fusedrnn.LSTM(4, 6)(torch.randn(3, 2, 4), torch.randn(1, 2, 6))


def test_zero_length_sequence_in_packed_input_is_refused():
    packed = PackedSequence(torch.randn(3, 4), torch.tensor([2, 1, 0]))
    with pytest.raises(ValueError, match=r"batch_sizes must be positive"):
        fusedrnn.LSTM(4, 6)(packed)


def test_packed_input_with_growing_batch_sizes_is_refused():
    packed = PackedSequence(torch.randn(3, 4), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"non-increasing"):
        fusedrnn.GRU(4, 6)(packed)


@pytest.mark.parametrize("rows, batch_sizes", [(5, [2, 2]), (3, [2, 2]), (3, [2, 1, 1])])
def test_packed_data_that_batch_sizes_do_not_add_up_to_is_refused(rows, batch_sizes):
    packed = PackedSequence(torch.randn(rows, 4), torch.tensor(batch_sizes))
    with pytest.raises(ValueError, match=rf"data has {rows} rows but its batch_sizes add up"):
        fusedrnn.LSTM(4, 6)(packed)


def test_packed_data_must_be_two_dimensional():
    packed = PackedSequence(torch.randn(3, 1, 4), torch.tensor([2, 1]))
    with pytest.raises(RuntimeError, match=r"data must have 2 dimensions, got 3"):
        fusedrnn.RNN(4, 6)(packed)


@pytest.mark.parametrize("backend", ["reference",
                                     pytest.param("cpu", marks=pytest.mark.requires_cpu_ext)])
@pytest.mark.parametrize("with_hx", [False, True])
@pytest.mark.parametrize("label, indices", [
    ("sorted_indices", torch.tensor([1, 0])), ("sorted_indices", torch.tensor([1.0, 0.0, 2.0])),
    ("unsorted_indices", torch.tensor([0, 2]))])
def test_packed_indices_that_do_not_fit_the_batch_are_refused(label, indices, with_hx,
                                                              backend):
    """A hand-built PackedSequence's index tensors permute the states: one shorter than the
    batch (or not of integers) is named, where the correct h_0 was blamed or an internal
    error raised (a short unsorted_indices gave h_n a row too few)."""
    packed = PackedSequence(torch.randn(6, 4), torch.tensor([3, 2, 1]),
                            torch.tensor([2, 0, 1]), torch.tensor([1, 2, 0]))
    packed = packed._replace(**{label: indices})
    hx = torch.randn(1, 3, 6) if with_hx else None
    with pytest.raises(ValueError, match=rf"PackedSequence.{label} must be a 1-D int64 .* "
                                         r"tensor of the batch's size 3"):
        fusedrnn.GRU(4, 6, backend=backend)(packed, hx)


def test_non_tensor_input():
    with pytest.raises(TypeError, match=r"input must be a Tensor or a PackedSequence"):
        fusedrnn.LSTM(4, 6)([1.0, 2.0])


def test_functional_weight_shape_is_checked():
    weights = list(fusedrnn.LSTM(4, 6)._flat_weights)
    weights[1] = torch.randn(24, 5)
    with pytest.raises(ValueError, match=r"weights\[1\] \(w_hh of layer 0\) should have shape "
                       r"\(24, 6\), got \(24, 5\)"):
        fusedrnn.functional.lstm(torch.randn(3, 2, 4), None, weights)


def test_functional_weight_count_is_checked():
    weights = list(fusedrnn.GRU(4, 6)._flat_weights)[:3]
    with pytest.raises(ValueError, match=r"weights must hold 4 tensors"):
        fusedrnn.functional.gru(torch.randn(3, 2, 4), None, weights)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dropout=1.5), ValueError, "dropout should be a number in range"),
    (dict(dropout=True), ValueError, "dropout should be a number in range"),
    (dict(num_layers=0), ValueError, "num_layers must be greater than zero"),
    (dict(proj_size=6), ValueError, "proj_size has to be smaller than hidden_size"),
    (dict(proj_size=-1), ValueError, "proj_size should be a positive integer"),
])
def test_constructor_arguments_like_torch(kwargs, error, match):
    with pytest.raises(error):
        nn.LSTM(4, 6, **kwargs)
    with pytest.raises(error, match=match):
        fusedrnn.LSTM(4, 6, **kwargs)


@pytest.mark.parametrize("args, kwargs, error, match", [
    ((0, 6), {}, ValueError, "input_size must be greater than zero"),
    ((-1, 6), {}, ValueError, "input_size must be greater than zero"),
    ((4.0, 6), {}, TypeError, "input_size should be of type int, got: float"),
    ((4, 6), dict(bias=0), TypeError, "bias should be of type bool, got: int"),
    ((4, 6), dict(batch_first=1), TypeError, "batch_first should be of type bool, got: int"),
])
def test_constructor_checks_of_recent_torch(args, kwargs, error, match):
    """torch 2.14's checks (older torch accepts some of these and fails later, or never)."""
    with pytest.raises(error, match=match):
        fusedrnn.GRU(*args, **kwargs)


@pytest.mark.parametrize("name", ["GRU", "RNN"])
@pytest.mark.parametrize("proj_size", [0, 2])
def test_gru_and_rnn_refuse_proj_size_like_torch(name, proj_size):
    with pytest.raises(ValueError):
        getattr(nn, name)(4, 6, proj_size=proj_size)
    with pytest.raises(ValueError, match="proj_size argument is only supported for LSTM"):
        getattr(fusedrnn, name)(4, 6, proj_size=proj_size)
    with pytest.raises(TypeError, match="unexpected keyword argument 'hidden'"):
        getattr(fusedrnn, name)(4, 6, hidden=2)


@pytest.mark.parametrize("args", [(4, 6, True), (True, 6), (4, True)])
def test_bools_are_ints_as_in_torch(args):
    """torch checks sizes with isinstance(value, int), which a bool passes."""
    ours, theirs = _both("LSTM", *args)
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]


def test_a_deleted_weight_is_named():
    module = fusedrnn.GRU(4, 6)
    del module.weight_hh_l0
    with pytest.raises(RuntimeError, match="weight weight_hh_l0 was deleted"):
        module(torch.randn(3, 2, 4))


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_a_cell_with_a_deleted_weight_raises_torchs_error(name):
    ours, theirs = getattr(fusedrnn, name)(4, 6), getattr(torch.nn, name)(4, 6)
    x = torch.randn(2, 4)
    for module in (ours, theirs):
        del module.weight_hh
        with pytest.raises(AttributeError, match=f"'{name}' object has no attribute 'weight_hh'"):
            module(x)


def test_unknown_nonlinearity():
    with pytest.raises(ValueError, match="Unknown nonlinearity 'gelu'"):
        fusedrnn.RNN(4, 6, nonlinearity="gelu")


@pytest.mark.parametrize("name, call, match", [
    ("LSTMCell", lambda m: m(torch.randn(2, 3, 4)), r"Expected input to be 1D or 2D, got 3D"),
    ("GRUCell", lambda m: m(torch.randn(3, 4), torch.randn(2, 6)), r"Input batch size 3 doesn't match hx batch size 2"),
    ("GRUCell", lambda m: m(torch.randn(3, 4), torch.randn(1, 3, 6)), r"GRUCell: Expected hx to be 1D or 2D, got 3D"),
    ("LSTMCell", lambda m: m(torch.randn(3, 4), (torch.randn(1, 3, 6),) * 2),
     r"LSTMCell: Expected hx\[0\] to be 1D or 2D, got 3D"),
    ("RNNCell", lambda m: m(torch.randn(3, 4, dtype=torch.float64)),
     r"RNNCell: input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
])
def test_cells_refuse_bad_input(name, call, match):
    ours, theirs = _both(name, 4, 6)
    _raises_like_torch(ours, theirs, call, match)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool])
@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_an_integer_state_under_autocast_is_refused(name, dtype):
    """Autocast casts floating tensors only: torch.nn refuses an integer state there too
    (fusedrnn cast it and ran, or blamed the backend)."""
    ours, theirs = _both(name, 4, 6)
    cell = name.endswith("Cell")
    x = torch.randn(2, 4) if cell else torch.randn(3, 2, 4)
    state = torch.zeros((2, 6) if cell else (1, 2, 6), dtype=dtype)
    hx = (state, state) if name.startswith("LSTM") else state
    label = {"LSTM": r"LSTM: hx\[0\] \(h_0\)", "LSTMCell": r"LSTMCell: hx\[0\]"}.get(
        name, f"{name}: hx")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            theirs(x, hx)
        with pytest.raises(RuntimeError, match=f"^{label} must be a floating-point tensor"):
            ours(x, hx)


def _lstm_weights():
    return list(fusedrnn.LSTM(5, 7)._flat_weights)  # w_ih (28, 5), w_hh (28, 7), b_ih, b_hh


@pytest.mark.parametrize("change, error, match", [
    (lambda w: [torch.randn(27, 5), *w[1:]], ValueError,
     r"weights\[0\] \(w_ih of layer 0\) should have shape \(28, 5\), got \(27, 5\)"),
    (lambda w: [torch.randn(28), *w[1:]], TypeError,
     r"weights\[0\] \(w_ih of layer 0\) must be a 2-D tensor, got a 1-D tensor"),
    (lambda w: [*w[:3], None], TypeError, r"weights\[3\] \(b_hh of layer 0\) must be a 1-D "
     "tensor, got NoneType"),
    (lambda w: [w[0], w[1].tolist(), *w[2:]], TypeError, r"weights\[1\] \(w_hh of layer 0\)"),
    (lambda w: [w[0], torch.randn(27, 7), *w[2:]], ValueError,
     r"weights\[1\] \(w_hh of layer 0\) has 27 rows, not a multiple of the 4 gates"),
    (lambda w: w[0], TypeError, r"weights must be a list of tensors"),
    (lambda w: [w[1], w[0], *w[2:]], RuntimeError,
     r"Expected 7, got 5 \(input_size: the columns of weights\[0\], w_ih\)"),
])
def test_functional_weight_errors_name_the_weight(change, error, match):
    with pytest.raises(error, match=match):
        fusedrnn.functional.lstm(torch.randn(4, 3, 5), None, change(_lstm_weights()))


def test_a_reverse_direction_weight_is_named():
    module = fusedrnn.LSTM(3, 4, num_layers=2, bidirectional=True)
    weights = list(module._flat_weights)
    weights[5] = torch.randn(16, 5)
    with pytest.raises(ValueError, match=r"weights\[5\] \(w_hh of layer 0, reverse\) should "
                       r"have shape \(16, 4\)"):
        fusedrnn.functional.lstm(torch.randn(2, 1, 3), None, weights, num_layers=2,
                                 bidirectional=True)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_layers=1.0), "num_layers must be a positive integer, got 1.0"),
    (dict(proj_size=3.0), "proj_size should be a non-negative integer, got 3.0"),
    (dict(dropout="0.1"), "dropout should be a number in range"),
])
def test_functional_options_are_checked_whatever_ran_before(kwargs, match):
    """Calls are checked once per signature (functional._plan_key): 1.0 hashes as 1, so the
    signature holds the options' types too."""
    weights = list(fusedrnn.LSTM(5, 7, proj_size=3 if "proj_size" in kwargs else 0)
                   ._flat_weights)
    x = torch.randn(4, 3, 5)
    valid = {key: int(value) for key, value in kwargs.items() if key != "dropout"}
    fusedrnn.functional.lstm(x, None, weights, **valid)
    for _ in range(2):
        with pytest.raises(ValueError, match=match):
            fusedrnn.functional.lstm(x, None, weights, **kwargs)


@pytest.mark.parametrize("hx", [lambda h: (h,), lambda h: [h]])
def test_a_gru_state_in_a_container_is_refused_after_a_valid_call(hx):
    module = fusedrnn.GRU(5, 7)
    x, h = torch.randn(4, 3, 5), torch.randn(1, 3, 7)
    module(x, h)
    with pytest.raises(TypeError, match="hx must be a Tensor"):
        module(x, hx(h))


@pytest.mark.parametrize("kwargs", [dict(num_layers=np.int64(2)), dict(proj_size=np.int64(3))])
def test_numpy_integers_are_sizes_as_in_torch(kwargs):
    ours, theirs = _both("LSTM", 5, 7, **kwargs)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 3, 5)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])
    with pytest.raises(TypeError, match="should be an integer, got: float"):
        fusedrnn.LSTM(5, 7, **{key: 2.0 for key in kwargs})


def test_an_rnn_cell_checks_its_nonlinearity_when_called_as_torchs_does():
    """torch's RNNCell takes any nonlinearity and refuses an unknown one per call (a changed
    attribute too; fusedrnn raised a bare KeyError then)."""
    for module in _both("RNNCell", 4, 6, nonlinearity="gelu"):
        with pytest.raises(RuntimeError, match="Unknown nonlinearity: gelu"):
            module(torch.randn(2, 4))
    ours, theirs = _both("RNNCell", 4, 6)
    for module in (ours, theirs):
        module.nonlinearity = "sigmoid"
        with pytest.raises(RuntimeError, match="Unknown nonlinearity: sigmoid"):
            module(torch.randn(2, 4))


def test_a_cell_names_a_state_that_is_not_a_tensor():
    """(torch's LSTMCell raises an AttributeError from inside its checks here.)"""
    with pytest.raises(TypeError, match=r"LSTMCell: hx\[1\] must be a Tensor, got NoneType"):
        fusedrnn.LSTMCell(4, 6)(torch.randn(3, 4), (torch.randn(3, 6), None))

"""The way back to torch.nn: ``to_torch_nn``, ``torch.jit.script`` through it, and
``nn.RNNBase``'s check methods for subclasses written against torch's modules."""

import io
import pickle
from copy import deepcopy
import warnings

import pytest
import torch
from torch import nn

import fusedrnn
from fusedrnn import testing

DT = torch.float64
CONFIGS = [
    ("LSTM", dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True)),
    ("GRU", dict(num_layers=2, bias=False)),
    ("RNN", dict(nonlinearity="relu", bidirectional=True)),
    ("LSTMCell", {}),
    ("GRUCell", dict(bias=False)),
    ("RNNCell", dict(nonlinearity="relu")),
]


def _input(name, module):
    if name.endswith("Cell"):
        return torch.randn(3, 5, dtype=DT)
    return testing.make_sequence(3, 4, 5, batch_first=module.batch_first, dtype=DT)


class _Model(nn.Module):
    """A model holding a recurrent module, as torch.jit.script sees it in user code."""

    def __init__(self, recurrent):
        super().__init__()
        self.recurrent = recurrent

    def forward(self, x):
        out = self.recurrent(x)
        return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_to_torch_nn_holds_the_same_parameters(name, kwargs):
    ours = getattr(fusedrnn, name)(5, 8, **kwargs, dtype=DT)
    theirs = ours.to_torch_nn()
    assert type(theirs) is getattr(nn, name)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    theirs_parameters, our_parameters = list(theirs.parameters()), list(ours.parameters())
    assert len(theirs_parameters) == len(our_parameters)
    assert all(a is b for a, b in zip(theirs_parameters, our_parameters))
    x = _input(name, ours)
    out, ref = testing.flatten_outputs(ours(x)), testing.flatten_outputs(theirs(x))
    testing.assert_close_relative(out, ref, 1e-10, name)
    ref[0].sum().backward()
    assert all(p.grad is not None for p in ours.parameters())


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_torch_jit_script_scripts_the_torch_nn_module(name, kwargs, tmp_path):
    model = _Model(getattr(fusedrnn, name)(5, 8, **kwargs, dtype=DT))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
        scripted = torch.jit.script(model)
    x = _input(name, model.recurrent)
    expected = model(x)
    testing.assert_close_relative([scripted(x)], [expected], 1e-10, "scripted")
    scripted.save(tmp_path / "model.pt")
    loaded = torch.jit.load(tmp_path / "model.pt")
    testing.assert_close_relative([loaded(x)], [expected], 1e-10, "saved and loaded")


class _Doubled(nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_a_parametrized_weight_is_the_one_used(name, kwargs):
    """A parametrization (a property in the parameter's place) is what a call runs on, as in
    torch.nn: the modules read registered parameters from ``_parameters`` and anything else
    by getattr (modules.module_weights)."""
    ours = getattr(fusedrnn, name)(5, 8, **kwargs, dtype=DT)
    weight = "weight_hh" if name.endswith("Cell") else "weight_hh_l0"
    theirs = ours.to_torch_nn()
    x = _input(name, ours)
    nn.utils.parametrize.register_parametrization(ours, weight, _Doubled())
    nn.utils.parametrize.register_parametrization(theirs, weight, _Doubled())
    out, ref = testing.flatten_outputs(ours(x)), testing.flatten_outputs(theirs(x))
    testing.assert_close_relative(out, ref, 1e-10, name)
    out[0].sum().backward()
    assert ours.parametrizations[weight].original.grad is not None


def test_to_torch_nn_refuses_a_parametrized_weight():
    module = fusedrnn.LSTM(5, 8)
    nn.utils.parametrizations.weight_norm(module, "weight_hh_l0")
    with pytest.raises(RuntimeError, match="weight_hh_l0 is not a Parameter"):
        module.to_torch_nn()


@pytest.mark.parametrize("name, kwargs", CONFIGS[:3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_rnnbase_check_methods_like_torch(name, kwargs, packed):
    ours = getattr(fusedrnn, name)(5, 8, **kwargs)
    theirs = getattr(nn, name)(5, 8, **kwargs)
    if packed:
        x = testing.make_packed(3, 4, 5)
        x, batch_sizes = x.data, x.batch_sizes
    else:
        x, batch_sizes = testing.make_sequence(3, 4, 5, batch_first=ours.batch_first), None
    size = ours.get_expected_hidden_size(x, batch_sizes)
    assert size == theirs.get_expected_hidden_size(x, batch_sizes)
    hx = testing.make_state(ours, size[1])
    ours.check_forward_args(x, hx, batch_sizes)
    theirs.check_forward_args(x, hx, batch_sizes)
    permutation = torch.tensor([2, 0, 1])
    testing.assert_close_relative(testing.flatten_outputs(ours.permute_hidden(hx, permutation)),
                                  testing.flatten_outputs(theirs.permute_hidden(hx, permutation)),
                                  0, "permute_hidden")
    wrong = testing.make_state(ours, size[1] + 1)
    with pytest.raises(RuntimeError) as torch_error:
        theirs.check_forward_args(x, wrong, batch_sizes)
    with pytest.raises(RuntimeError, match=str(torch_error.value).replace("[", r"\[")
                       .replace("(", r"\(").replace(")", r"\)")):
        ours.check_forward_args(x, wrong, batch_sizes)
    with pytest.raises(ValueError, match="does not match weight dtype"):
        ours.check_input(x.double(), batch_sizes)


@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
@pytest.mark.parametrize("bias, given", [(False, ("bias_ih", "bias_hh")), (True, ()),
                                         (False, ("bias_hh",)), (True, ("bias_ih",))])
def test_cells_run_on_the_bias_attributes_whatever_they_were_built_with(name, bias, given):
    """torch's cells pass ``bias_ih`` and ``bias_hh`` on whatever ``bias`` they were built
    with: a cell built without biases may be given them, and one set to None adds nothing."""
    ours = getattr(fusedrnn, name)(5, 8, bias=bias, dtype=DT)
    theirs = getattr(nn, name)(5, 8, bias=bias, dtype=DT)
    theirs.load_state_dict(ours.state_dict())
    rows = ours.weight_ih.shape[0]
    for attribute in ("bias_ih", "bias_hh"):
        value = nn.Parameter(torch.randn(rows, dtype=DT)) if attribute in given else None
        setattr(ours, attribute, value)
        setattr(theirs, attribute, value)
    x, h = torch.randn(3, 5, dtype=DT), torch.randn(3, 8, dtype=DT)
    hx = (h, h.clone()) if name == "LSTMCell" else h
    out, ref = testing.flatten_outputs(ours(x, hx)), testing.flatten_outputs(theirs(x, hx))
    testing.assert_close_relative(out, ref, 1e-10, name)
    twin = testing.flatten_outputs(ours.to_torch_nn()(x, hx))  # torch.jit.script's module
    testing.assert_close_relative(twin, ref, 1e-10, "to_torch_nn")
    if given:
        grads = torch.autograd.grad(out[0].sum(), [getattr(ours, a) for a in given])
        expected = torch.autograd.grad(ref[0].sum(), [getattr(theirs, a) for a in given])
        testing.assert_close_relative(grads, expected, 1e-10, "bias gradients")


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_an_instance_attribute_hides_the_parameter_as_in_torch(name, kwargs):
    """``object.__setattr__`` (as weight-dropping wrappers set a dropped weight) puts a tensor
    in the instance's dict, which getattr finds before the registered parameter; the modules
    rebuild torch's ``_flat_weights`` from getattr (the weight's object changed), the
    cells read getattr."""
    ours = getattr(fusedrnn, name)(5, 8, **kwargs, dtype=DT)
    theirs = ours.to_torch_nn()
    weight = "weight_hh" if name.endswith("Cell") else "weight_hh_l0"
    doubled = 2 * getattr(ours, weight).detach()
    for module in (ours, theirs):
        object.__setattr__(module, weight, doubled)
    x = _input(name, ours)
    out, ref = testing.flatten_outputs(ours(x)), testing.flatten_outputs(theirs(x))
    testing.assert_close_relative(out, ref, 1e-10, name)


def test_a_compiled_module_sees_an_assigned_flat_weights_list():
    """torch.compile guards on the held list (an attribute read, not a look in __dict__)."""
    module = fusedrnn.LSTM(3, 4)
    compiled = torch.compile(module, backend="eager")
    x = torch.randn(5, 2, 3)
    compiled(x)
    module._flat_weights = [torch.zeros_like(w) for w in module._flat_weights]
    assert compiled(x)[0].abs().sum() == 0 and module(x)[0].abs().sum() == 0


def test_a_deep_copy_of_a_compiled_module_runs_the_copy():
    """nn.Module drops its compiled call from a copy's state (RNNBase.__getstate__ keeps
    that): the copy's weights zeroed, its output is zero."""
    module = fusedrnn.LSTM(3, 4)
    module.compile(backend="eager")
    x = torch.randn(5, 2, 3)
    module(x)
    copy = deepcopy(module)
    with torch.no_grad():
        for weight in copy.parameters():
            weight.zero_()
    assert copy(x)[0].abs().sum() == 0
    assert pickle.loads(pickle.dumps(module))(x)[0].abs().sum() > 0


@pytest.mark.parametrize("name, kwargs", CONFIGS[:3])
def test_an_assigned_flat_weights_list_holds_until_a_weight_changes(name, kwargs):
    """torch.nn's ``_flat_weights`` is a list a call runs on, which code may assign; torch
    rebuilds it from the attributes when one of them is set anew, or the module converted."""
    ours = getattr(fusedrnn, name)(5, 8, **kwargs, dtype=DT)
    theirs = getattr(nn, name)(5, 8, **kwargs, dtype=DT)  # a twin's list is rebuilt always
    theirs.load_state_dict(ours.state_dict())
    x = _input(name, ours)
    plain = testing.flatten_outputs(ours(x))
    for module in (ours, theirs):
        module._flat_weights = [2 * w.detach() if i == 1 else w
                                for i, w in enumerate(module._flat_weights)]
    held = testing.flatten_outputs(ours(x))
    testing.assert_close_relative(held, testing.flatten_outputs(theirs(x)), 1e-10, "held")
    assert testing.relative_error(held[0], plain[0]) > 1e-3  # not the attributes
    copy = pickle.loads(pickle.dumps(ours))
    testing.assert_close_relative(testing.flatten_outputs(copy(x)), held, 1e-10, "pickled")
    replaced = nn.Parameter(ours.weight_ih_l0.detach().clone())
    for module in (ours, theirs):
        module.weight_ih_l0 = replaced
    out, ref = testing.flatten_outputs(ours(x)), testing.flatten_outputs(theirs(x))
    testing.assert_close_relative(out, ref, 1e-10, "after a weight is set")
    assert testing.relative_error(out[0], held[0]) > 1e-3
    copy._flat_weights = list(copy._flat_weights)[::-1][::-1]
    copy.float()
    assert copy(x.float())[0].dtype == torch.float32  # converted: the attributes again


class _AsFusedrnn(pickle.Unpickler):
    """Loads a pickled torch.nn recurrent module as the fusedrnn class of its name."""

    def find_class(self, module, name):
        if module == "torch.nn.modules.rnn" and hasattr(fusedrnn, name):
            return getattr(fusedrnn, name)
        return super().find_class(module, name)


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_a_torch_nn_pickle_loads_as_the_drop_in(name, kwargs):
    """A pickled torch.nn module loaded as the fusedrnn class (the usual way to swap drop-ins
    into a saved model) runs with fusedrnn's defaults and gives torch's outputs and
    gradients; it failed on the missing ``backend``."""
    theirs = getattr(nn, name)(5, 8, **kwargs, dtype=DT)
    ours = _AsFusedrnn(io.BytesIO(pickle.dumps(theirs))).load()
    assert type(ours) is getattr(fusedrnn, name) and ours.backend == "auto"
    x = _input(name, ours)
    results = []
    for module in (ours, theirs):
        out = testing.flatten_outputs(module(x))
        results.append(out + list(torch.autograd.grad(out[0].sum(), list(module.parameters()))))
    testing.assert_close_relative(results[0], results[1], 1e-10, name)


def test_a_torch_nn_pickle_with_an_assigned_flat_weights_list_loads_it():
    """torch's pickle keeps an assigned ``_flat_weights`` list (until a weight changes), and
    so does the drop-in loaded from it."""
    theirs = nn.GRU(5, 8, dtype=DT)
    theirs._flat_weights = [2 * w.detach() if i == 1 else w
                            for i, w in enumerate(theirs._flat_weights)]
    ours = _AsFusedrnn(io.BytesIO(pickle.dumps(theirs))).load()
    x = _input("GRU", ours)
    testing.assert_close_relative(testing.flatten_outputs(ours(x)),
                                  testing.flatten_outputs(theirs(x)), 1e-10, "held list")

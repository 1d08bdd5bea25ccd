"""The model families and their registry: shapes, exact sizes, and one-line errors for bad arguments."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from reslab import models
from reslab.errors import ConfigError
from reslab.models import build_model, list_models, model_arguments, register_model

MNIST, CIFAR = (1, 28, 28), (3, 32, 32)
# Small widths keep the convolutional models fast on 2 CPU cores; shapes do not depend on them.
SMALL = {"mlp": {}, "resmlp": {}, "cnn": {"width": 8, "max_width": 16, "hidden": 16},
         "rescnn": {"width": 8, "max_width": 16}, "noskipcnn": {"width": 8, "max_width": 16}}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out                  # weight + bias


def test_registered_models():
    assert list_models() == ["cnn", "mlp", "noskipcnn", "rescnn", "resmlp"]


@pytest.mark.parametrize("name", ["mlp", "resmlp", "cnn", "rescnn", "noskipcnn"])
@pytest.mark.parametrize("shape, classes", [(MNIST, 10), (CIFAR, 100)])
def test_output_shape(name, shape, classes):
    torch.manual_seed(0)
    model = build_model(name, shape, classes, **SMALL[name])
    x = torch.randn(3, *shape)
    out = model(x)
    assert out.shape == (3, classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    model.eval()
    assert model(x[:1]).shape == (1, classes)


@pytest.mark.parametrize("name", ["mlp", "resmlp", "cnn", "rescnn", "noskipcnn"])
def test_default_arguments_build(name):
    model = build_model(name, CIFAR, 10)
    assert model(torch.randn(2, *CIFAR)).shape == (2, 10)


def test_mlp_parameter_count():
    model = build_model("mlp", MNIST, 10)
    expected = _linear(784, 128) + _linear(128, 64) + _linear(64, 10)
    assert expected == 109_386
    assert _count(model) == expected
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.2]


def test_mlp_custom_hidden_sizes():
    model = build_model("mlp", CIFAR, 10, hidden=[50], dropout=0.0)
    assert _count(model) == _linear(3 * 32 * 32, 50) + _linear(50, 10)


def test_resmlp_parameter_count():
    width, blocks = 110, 2
    model = build_model("resmlp", MNIST, 10, width=width, blocks=blocks)
    block = 2 * _linear(width, width)            # fc1 and fc2
    expected = _linear(784, width) + blocks * block + _linear(width, 10)
    assert expected == 136_300
    assert _count(model) == expected
    assert _count(build_model("resmlp", MNIST, 10)) == expected  # width 110, 2 blocks are the defaults


def test_resmlp_blocks_add_their_input():
    model = build_model("resmlp", MNIST, 10, width=4, blocks=1, dropout=0.0)
    block = model.blocks[0]
    with torch.no_grad():
        block.fc1.weight.zero_()
        block.fc1.bias.zero_()
        block.fc2.weight.zero_()
        block.fc2.bias.zero_()
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    assert torch.equal(block(x), torch.relu(x))  # zero branch: relu(0 + identity)


@pytest.mark.parametrize("name", ["cnn", "rescnn", "noskipcnn"])
@pytest.mark.parametrize("depth", [1, 2, 3, 6])
def test_conv_models_at_every_depth(name, depth):
    for shape in (MNIST, CIFAR):
        model = build_model(name, shape, 10, depth=depth, **SMALL[name])
        with torch.no_grad():
            assert model(torch.randn(2, *shape)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    # cnn: `depth` conv layers; rescnn and noskipcnn: a stem conv plus two per BasicBlock.
    assert len(convs) == (depth if name == "cnn" else 1 + 2 * depth)


def test_rescnn_deeper_has_more_parameters():
    counts = [_count(build_model("rescnn", CIFAR, 10, depth=d, **SMALL["rescnn"])) for d in (1, 2, 3, 6)]
    assert counts == sorted(counts) and len(set(counts)) == 4


def test_noskip_twin_is_rescnn_without_its_skip_paths():
    for depth in (1, 2, 3, 6):
        res = build_model("rescnn", CIFAR, 10, depth=depth, **SMALL["rescnn"])
        twin = build_model("noskipcnn", CIFAR, 10, depth=depth, **SMALL["noskipcnn"])
        # Every parameter of the twin is rescnn's, under the same name and shape; rescnn has only the 1x1
        # projection shortcuts (conv + BN) in addition.
        res_shapes = {n: p.shape for n, p in res.named_parameters()}
        twin_shapes = {n: p.shape for n, p in twin.named_parameters()}
        assert twin_shapes.items() <= res_shapes.items()
        assert all(".shortcut." in n for n in set(res_shapes) - set(twin_shapes))
        assert sum(isinstance(m, nn.BatchNorm2d) for m in twin.modules()) == 1 + 2 * depth


def test_noskip_block_output_is_its_conv_branch_alone():
    torch.manual_seed(0)
    res, twin = models.BasicBlock(4, 4), models.BasicBlock(4, 4, skip=False)
    twin.load_state_dict(res.state_dict())
    res.eval(), twin.eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        branch = res.bn2(res.conv2(torch.relu(res.bn1(res.conv1(x)))))
        assert torch.allclose(twin(x), torch.relu(branch))
        assert torch.allclose(res(x), torch.relu(branch + x))


def test_list_models_pattern():
    assert list_models("res*") == ["rescnn", "resmlp"]
    assert list_models("*mlp") == ["mlp", "resmlp"]
    assert list_models("*cnn") == ["cnn", "noskipcnn", "rescnn"]
    assert list_models("vit*") == []


def test_register_model_adds_a_builder(monkeypatch):
    monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

    @register_model
    def linear_probe(input_shape, num_classes, bias=True):
        c, h, w = input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes, bias=bias))

    assert "linear_probe" in list_models()
    assert list_models("linear*") == ["linear_probe"]
    assert model_arguments("linear_probe") == {"bias": True}
    model = build_model("linear_probe", MNIST, 10, bias=False)
    assert _count(model) == 7840
    assert model.reslab_spec == {"name": "linear_probe", "args": {"bias": False}}
    with pytest.raises(ConfigError, match="depth"):
        build_model("linear_probe", MNIST, 10, depth=3)


def test_reslab_spec_records_every_argument():
    model = build_model("rescnn", CIFAR, 10, depth=2, width=8)
    assert model.reslab_spec == {"name": "rescnn", "args": {"depth": 2, "width": 8, "max_width": 256,
                                                            "downsamples": 2, "dropout": 0.2}}
    model = build_model("mlp", MNIST, 10)
    assert model.reslab_spec["name"] == "mlp"
    assert tuple(model.reslab_spec["args"]["hidden"]) == (128, 64) and model.reslab_spec["args"]["dropout"] == 0.2
    # The spec rebuilds the same architecture.
    again = build_model(model.reslab_spec["name"], MNIST, 10, **model.reslab_spec["args"])
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_unknown_model_lists_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        build_model("resnet50", CIFAR, 10)
    message = _one_line(exc)
    assert "'resnet50'" in message
    for name in list_models():
        assert name in message


def test_unknown_argument_names_it_and_the_valid_ones():
    with pytest.raises(ConfigError) as exc:
        build_model("mlp", MNIST, 10, depth=3)
    message = _one_line(exc)
    assert "'mlp'" in message and "depth" in message and "hidden" in message and "dropout" in message


@pytest.mark.parametrize("name, kwargs, phrase", [
    ("rescnn", {"depth": 0}, "depth must be an integer in [1, 1000], got 0"),
    ("cnn", {"depth": 0}, "depth must be an integer in [1, 1000], got 0"),
    ("cnn", {"depth": 2.5}, "depth must be an integer in [1, 1000], got 2.5"),
    ("rescnn", {"width": -8}, "width must be an integer in [1, 65536]"),
    ("resmlp", {"blocks": 0}, "blocks must be an integer in [1, 1000]"),
    ("mlp", {"hidden": [128, 0]}, "hidden size must be an integer in [1, 65536], got 0"),
    ("mlp", {"dropout": 1.5}, "dropout must be a number in [0, 1), got 1.5"),
    ("rescnn", {"dropout": -0.1}, "dropout must be a number in [0, 1), got -0.1"),
    ("resmlp", {"dropout": 1.0}, "dropout must be a number in [0, 1), got 1.0"),
    ("rescnn", {"downsamples": -1}, "downsamples must be an integer in [0, 1000]"),
    ("noskipcnn", {"depth": 0}, "depth must be an integer in [1, 1000], got 0"),
    ("noskipcnn", {"dropout": 1.0}, "dropout must be a number in [0, 1), got 1.0"),
])
def test_bad_values_are_config_errors(name, kwargs, phrase):
    with pytest.raises(ConfigError) as exc:
        build_model(name, CIFAR, 10, **kwargs)
    assert phrase in _one_line(exc)


@pytest.mark.parametrize("name, kwargs, phrase", [
    ("rescnn", {"depth": True}, "depth"),              # `depth: yes` in a YAML file
    ("cnn", {"depth": "3"}, "depth"),                  # `depth: "3"` in a YAML file
    ("mlp", {"dropout": "0.2"}, "dropout"),
    ("mlp", {"hidden": 128}, "hidden"),                # `hidden: 128` instead of a list
    ("mlp", {"hidden": ["a"]}, "hidden"),
])
def test_values_of_the_wrong_type_are_config_errors(name, kwargs, phrase):
    with pytest.raises(ConfigError) as exc:
        build_model(name, CIFAR, 10, **kwargs)
    assert phrase in _one_line(exc)

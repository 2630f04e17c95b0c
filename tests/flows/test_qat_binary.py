"""Binary and ternary networks through lowbit.qat: prepare, train, convert — the converted model computes exactly
what the trained model computes in eval mode."""

import pytest
import torch
from torch import nn

from lowbit import qat
from lowbit.nn import SignQuantizer
from lowbit.nn.binary_quant import BinaryWeightQuantizer, SignActivationQuantizer
from lowbit.nn.fake_quant import STEWeightQuantizer
from lowbit.nn.qat_layers import QATLayer

KINDS = ["bnn", "bwn", "twn", "ttq", "five-level"]


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 96), nn.BatchNorm1d(96), nn.Hardtanh(),
                         nn.Linear(96, 96), nn.BatchNorm1d(96), nn.Hardtanh(), nn.Linear(96, 10))


def _cnn():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardtanh(),
                         nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.Hardtanh(), nn.MaxPool2d(2),
                         nn.Conv2d(24, 24, 3, padding=1), nn.BatchNorm2d(24), nn.Hardtanh(),
                         nn.Flatten(), nn.Linear(24 * 16, 10))


def _train(model, x, steps=4):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        model(x).logsumexp(1).mean().backward()
        opt.step()
        qat.clip_latent_weights(model)
    return model.eval()


@pytest.mark.parametrize("make", [_mlp, _cnn])
@pytest.mark.parametrize("kind", KINDS)
def test_converted_binary_model_equals_the_trained_one(make, kind):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    model = _train(qat.prepare(make(), quantizer=kind, calibration=[x]), x)
    frozen = qat.convert(model)
    assert torch.equal(frozen(x), model(x))


def test_bnn_places_sign_edges_inside_and_8_bit_ends():
    torch.manual_seed(1)
    x = torch.randn(16, 1, 8, 8)
    model = qat.prepare(_cnn(), quantizer="bnn", calibration=[x])
    layers = [m for m in model.modules() if isinstance(m, QATLayer)]
    kinds = [type(m.weight_quantizer) for m in layers]
    assert kinds == [STEWeightQuantizer, BinaryWeightQuantizer, BinaryWeightQuantizer, STEWeightQuantizer]
    assert sum(isinstance(m, SignActivationQuantizer) for m in model.modules()) == 3  # every binary layer and the last
    frozen = qat.convert(_train(model, x))
    assert sum(isinstance(m, SignQuantizer) for m in frozen.modules()) == 3
    # inside the network the binary layers only ever see ±1
    seen = []
    for m in frozen.modules():
        if isinstance(m, SignQuantizer):
            m.register_forward_hook(lambda _m, _i, out: seen.append(out))
    frozen(x)
    assert all(bool((t.abs() == 1).all()) for t in seen)


def test_xnor_layers_read_the_real_input_for_k():
    torch.manual_seed(2)
    x = torch.randn(16, 1, 8, 8)
    model = qat.prepare(_cnn(), quantizer="xnor", calibration=[x])
    scaled = [m for m in model.modules() if isinstance(m, QATLayer) and m.input_scale_map]
    assert len(scaled) == 2 and all(m.weight_quantizer.scaled for m in scaled)
    model.eval()
    out = model(x)
    for m in scaled:  # without K the output changes
        m.input_scale_map = False
    assert not torch.allclose(out, model(x))
    with pytest.raises(ValueError, match="input map K"):
        for m in scaled:
            m.input_scale_map = True
        qat.convert(model)


def test_fit_clips_the_latent_weights():
    torch.manual_seed(3)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    model = qat.prepare(_mlp(), quantizer="bnn", calibration=[x])
    qat.fit(model, (x, y), epochs=2, batch_size=16, lr=5.0, progress=False)
    binary = [m for m in model.modules() if isinstance(m, QATLayer) and isinstance(m.weight_quantizer,
                                                                                  BinaryWeightQuantizer)]
    assert binary and all(float(m.weight.detach().abs().max()) <= 1.0 for m in binary)


def test_binary_rules_refuse_progressive_bits_and_bad_configs():
    x = torch.randn(8, 1, 8, 8)
    model = qat.prepare(_mlp(), quantizer="twn", calibration=[x])
    with pytest.raises(ValueError, match="fixed grid"):
        qat.set_bits(model, 8)
    with pytest.raises(ValueError, match="activation rule"):
        qat.QATConfig(weight_quantizer="sign")
    with pytest.raises(ValueError, match="weight rule"):
        qat.QATConfig(activation_quantizer="twn")
    with pytest.raises(ValueError, match="stochastic"):
        qat.QATConfig.for_quantizer("twn", stochastic=True)


@pytest.mark.parametrize("kind", ["bnn", "twn"])
def test_a_converted_binary_model_saves_in_bits_and_loads_to_the_same_outputs(kind, tmp_path):
    import lowbit
    from lowbit.engine import lower
    from lowbit.serialize import folder_bytes

    torch.manual_seed(0)
    x = torch.randn(64, 1, 8, 8)
    frozen = qat.convert(_train(qat.prepare(_cnn(), quantizer=kind, calibration=[x]), x))
    folder = lowbit.save_quantized(frozen, tmp_path / kind, source="zoo:lenet5")  # any valid source; model= wins
    again = lowbit.load_quantized(folder, model=_cnn())
    assert torch.equal(again(x), frozen(x))
    signs = [n for n, m in again.named_modules() if isinstance(m, SignQuantizer)]
    assert signs == [n for n, m in frozen.named_modules() if isinstance(m, SignQuantizer)]
    assert bool(signs) == (kind == "bnn")
    if kind == "bnn":  # TWN keeps real activations (a weight-only recipe): nothing for the integer engine
        assert torch.equal(lower(again, x[:1])(x), lower(frozen, x[:1])(x))
    binary_weights = 16 * 24 * 9 + 24 * 24 * 9  # the two inner convolutions
    stored = lowbit.load_quantized.__globals__["load_file"](str(folder / "model.safetensors"))
    inner = stored["3.weight_q.packed"].numel() + stored["7.weight_q.packed"].numel()
    assert inner * 8 == binary_weights * (1 if kind == "bnn" else 2)  # one bit per ±1 weight, two per ternary
    assert folder_bytes(folder) > 0

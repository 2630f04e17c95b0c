"""lowbit.qat end to end: prepare → train → convert, against the integer engine, ONNX Runtime and save/load."""

import warnings

import pytest
import torch

import lowbit
from lowbit import qat
from lowbit.engine import lower
from lowbit.export import export_onnx, ort_session
from lowbit.nn import ActivationQuantizer, QuantConv, QuantLinear
from lowbit.nn.fake_quant import LSQActivationQuantizer, LSQWeightQuantizer
from lowbit.nn.qat_layers import QATLayer
from lowbit.zoo import load
from lowbit.zoo.data import fashion_mnist


@pytest.fixture(scope="module")
def data():
    train_images, train_labels = fashion_mnist("train").tensors
    test_images, test_labels = fashion_mnist("test").tensors
    return (train_images[:1024], train_labels[:1024]), (test_images[:1000], test_labels[:1000])


def _trained(name, recipe, quantizer, data, steps_images=512, **fit_options):
    (x, y), _ = data
    model = qat.prepare(load(name).model, recipe, quantizer, calibration=list(x[:256].split(64)))
    qat.fit(model, (x[:steps_images], y[:steps_images]), epochs=1, batch_size=64, lr=0.005, progress=False,
            **fit_options)
    return model


def test_prepare_puts_qat_layers_and_quantizers_where_ptq_puts_quantized_ones(data):
    (x, _), _ = data
    float_model = load("resnet20").model
    model = qat.prepare(float_model, "w4a4", "lsq", calibration=[x[:64]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ptq = lowbit.quantize(float_model, "w4a4", calibration=[x[:64]], progress=False)
    qat_layers = {n for n, m in model.named_modules() if isinstance(m, QATLayer)}
    ptq_layers = {n for n, m in ptq.named_modules() if isinstance(m, (QuantConv, QuantLinear))}
    assert qat_layers == ptq_layers and len(qat_layers) == 22
    edges = [n for n, m in model.named_modules() if isinstance(m, LSQActivationQuantizer)]
    assert edges == [n for n, m in ptq.named_modules() if isinstance(m, ActivationQuantizer)]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for n, m in model.named_modules() if "." not in n)
    bits = {n: m.weight_quantizer.spec.bits for n, m in model.named_modules() if isinstance(m, QATLayer)}
    assert bits["stem.0"] == 8 and bits["fc"] == 8 and bits["layers.0.conv1"] == 4  # first/last layers at 8
    assert model.training


@pytest.mark.slow
def test_converted_model_runs_in_the_engine_with_the_trained_models_decisions(data):
    model = _trained("resnet20", "w4a4", "lsq", data, freeze_bn_after=4)
    frozen = qat.convert(model)
    _, (images, _) = data
    with torch.no_grad():
        trained = model.eval()(images)
        simulated = frozen(images)
    engine = lower(frozen, images[:1])(images)
    assert (engine.argmax(1) == trained.argmax(1)).float().mean() >= 0.999
    assert (simulated.argmax(1) == trained.argmax(1)).float().mean() >= 0.999
    assert all(isinstance(m, (QuantConv, QuantLinear)) for n, m in frozen.named_modules() if "conv" in n.split(".")[-1])


@pytest.mark.parametrize("quantizer", ["pact", "dorefa", "ste"])
def test_converted_model_saves_loads_and_exports(quantizer, data, tmp_path):
    model = _trained("lenet5", "w4a4", quantizer, data, steps_images=256)
    frozen = qat.convert(model)
    folder = lowbit.save_quantized(frozen, tmp_path / "q", source="zoo:lenet5")
    again = lowbit.load_quantized(folder)
    _, (images, _) = data
    with torch.no_grad():
        assert torch.equal(frozen(images[:200]), again(images[:200]))
        trained = model.eval()(images[:200])
    assert (frozen(images[:200]).argmax(1) == trained.argmax(1)).float().mean() >= 0.99
    onnx_path = export_onnx(frozen, images[:1], tmp_path / "q.onnx")
    ort = ort_session(onnx_path).run(None, {"input_0": images[:200].numpy()})[0]
    assert (torch.from_numpy(ort).argmax(1) == trained.argmax(1)).float().mean() >= 0.99


def test_dorefa_weights_convert_to_a_recorded_wider_grid(data):
    model = _trained("lenet5", "w4a4", "dorefa", data, steps_images=128)
    frozen = qat.convert(model)
    layer = frozen.get_submodule("3")  # the second conv: 4-bit DoReFa codes are odd integers on a 5-bit grid
    assert layer.weight_spec.bits == 5 and bool((layer.weight_q.int() % 2 != 0).all())
    assert any(o.include == ("3",) and o.weight.bits == 5 for o in frozen.lowbit_recipe.overrides)


def test_gradient_quantization_changes_the_gradients_not_the_forward(data):
    (x, y), _ = data
    plain = qat.prepare(load("lenet5").model, "w4a4", qat.QATConfig(), calibration=[x[:64]])
    quantized = qat.prepare(load("lenet5").model, "w4a4", qat.QATConfig(gradient_bits=4), calibration=[x[:64]])
    outputs = []
    for model in (plain, quantized):
        torch.manual_seed(0)
        out = model(x[:32])
        torch.nn.functional.cross_entropy(out, y[:32]).backward()
        outputs.append((out.detach(), model.get_submodule("0").weight.grad.clone()))
    assert torch.equal(outputs[0][0], outputs[1][0])
    assert not torch.equal(outputs[0][1], outputs[1][1])


def test_schedules_lower_bits_and_stage_activations(data):
    (x, _), _ = data
    model = qat.prepare(load("lenet5").model, "w2a2", "lsq", calibration=[x[:64]])
    inner = model.get_submodule("3").weight_quantizer
    assert isinstance(inner, LSQWeightQuantizer)
    clip = (inner.step * inner.spec.qmax).detach().clone()
    progressive = qat.ProgressiveBits((8, 4), epochs_per_stage=1)
    progressive.apply(model, 0)
    assert inner.spec.bits == 8 and torch.allclose(inner.step * inner.spec.qmax, clip)
    with pytest.raises(ValueError, match="not at their recipe's bits"):
        qat.convert(model)
    progressive.apply(model, 2)
    assert inner.spec.bits == 2 and model.get_submodule("0").weight_quantizer.spec.bits == 8  # first layer stays
    two = qat.TwoStage(activation_epoch=1)
    two.apply(model, 0)
    assert not any(q.enabled for q in model.modules() if isinstance(q, LSQActivationQuantizer))
    with pytest.raises(ValueError, match="switched off"):
        qat.convert(model)
    two.apply(model, 1)
    assert all(q.enabled for q in model.modules() if isinstance(q, LSQActivationQuantizer))


def test_freeze_bn_stops_running_statistics(data):
    (x, y), _ = data
    model = qat.prepare(load("resnet20").model, "w4a4", "ste", calibration=[x[:64]])
    layer = model.get_submodule("stem.0")
    before = layer.bn.running_mean.clone()
    qat.fit(model, (x[:128], y[:128]), epochs=1, batch_size=64, progress=False, freeze_bn_after=0)
    assert torch.equal(layer.bn.running_mean, before) and bool(layer.bn_frozen)


def test_checkpoint_resumes_with_the_same_next_step(data, tmp_path):
    (x, y), _ = data

    def fresh():
        return qat.prepare(load("lenet5").model, "w4a4", "pact", calibration=[x[:64]])

    model = fresh()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    result = qat.fit(model, (x[:256], y[:256]), epochs=1, batch_size=64, optimizer=optimizer, progress=False,
                     checkpoint_dir=tmp_path)
    assert result.checkpoints and (tmp_path / "epoch-1.json").is_file()
    resumed = fresh()
    resumed_optimizer = torch.optim.SGD(resumed.parameters(), lr=0.01, momentum=0.9)
    metrics = qat.load_checkpoint(resumed, result.checkpoints[0], resumed_optimizer)
    assert metrics["epoch"] == 1
    for net, opt in ((model, optimizer), (resumed, resumed_optimizer)):
        net.train()
        opt.zero_grad()
        (torch.nn.functional.cross_entropy(net(x[:64]), y[:64]) + qat.regularization(net)).backward()
        opt.step()
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name


def test_bad_input_is_named(data):
    (x, _), _ = data
    lenet = load("lenet5").model
    with pytest.raises(ValueError, match="calibration=batches"):
        qat.prepare(lenet, "w4a4", "lsq")
    with pytest.raises(ValueError, match="is not one of"):
        qat.prepare(lenet, "w4a4", "lqs", calibration=[x[:8]])
    with pytest.raises(ValueError, match="static or weight-only"):
        qat.prepare(lenet, "w8-dynamic", "lsq", calibration=[x[:8]])
    with pytest.raises(ValueError, match="asymmetric"):
        qat.prepare(lenet, lowbit.Recipe(activation=lowbit.QuantSpec(bits=4, signed=False)), "lsq",
                    calibration=[x[:8]])
    with pytest.raises(ValueError, match="pact is an activation rule"):
        qat.QATConfig(weight_quantizer="pact")
    with pytest.raises(ValueError, match="returned by lowbit.qat.prepare"):
        qat.convert(lenet)
    with pytest.raises(ValueError, match="epochs"):
        qat.fit(lenet, (x[:8], x[:8]), epochs=0)


def test_a_skipped_layer_keeps_its_batchnorm_folded_like_ptq(data, tmp_path):
    (x, _), (images, _) = data
    recipe = lowbit.Recipe("w4a4-skip", weight=lowbit.QuantSpec(bits=4, granularity=lowbit.PerChannel(0)),
                           activation=lowbit.QuantSpec(bits=4, signed=False, symmetric=False), first_last_bits=8,
                           overrides=(lowbit.Override(include=("layers.0.conv1",), skip=True),))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frozen = qat.convert(qat.prepare(load("resnet20").model, recipe, "lsq", calibration=[x[:64]]))
        again = lowbit.load_quantized(lowbit.save_quantized(frozen, tmp_path / "q", source="zoo:resnet20"))
    assert isinstance(frozen.get_submodule("layers.0.conv1"), torch.nn.Conv2d)
    with torch.no_grad():
        assert torch.equal(frozen(images[:50]), again(images[:50]))


def test_a_checkpoint_taken_mid_schedule_restores_the_widths(data, tmp_path):
    (x, y), (images, _) = data

    def fresh():
        return qat.prepare(load("lenet5").model, "w2a2", "lsq", calibration=[x[:64]])

    model = fresh()
    qat.fit(model, (x[:128], y[:128]), epochs=1, batch_size=64, progress=False, checkpoint_dir=tmp_path,
            schedule=qat.ProgressiveBits((8,), epochs_per_stage=2))  # still at 8 bits when the checkpoint is taken
    resumed = fresh()
    qat.load_checkpoint(resumed, tmp_path / "epoch-1.safetensors")
    with torch.no_grad():
        assert torch.equal(model.eval()(images[:50]), resumed.eval()(images[:50]))


def test_fit_says_when_an_epoch_has_no_batch(data):
    (x, y), _ = data
    model = qat.prepare(load("lenet5").model, "w4a4", "lsq", calibration=[x[:64]])
    with pytest.raises(ValueError, match="epoch 1 had no batch"):
        qat.fit(model, (x[:10], y[:10]), batch_size=64, progress=False)


def test_dorefa_layers_get_batchnorm_statistics_of_their_quantized_outputs():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4)).eval()
    batches = [torch.randn(32, 1, 12, 12) for _ in range(3)]
    model = qat.prepare(net, "w2a2", "dorefa", calibration=batches)
    layer = model.get_submodule("3")  # the 2-bit middle conv: DoReFa weights fill [−1, 1], unlike the float ones
    seen = []
    hook = layer.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    qat.enable(model, activations=False)  # the pass that re-estimated them ran with activations in float
    with torch.no_grad():
        for b in batches:
            model.eval()(b)
    hook.remove()
    with torch.no_grad():
        outputs = torch.cat([torch.nn.functional.conv2d(x, layer.weight_quantizer(layer.weight), layer.bias)
                             for x in seen])
    assert torch.allclose(layer.bn.running_mean, outputs.mean(dim=(0, 2, 3)), rtol=0.05, atol=1e-3)
    ratio = layer.bn.running_var / outputs.var(dim=(0, 2, 3))
    assert bool(((ratio > 0.9) & (ratio < 1.1)).all())


def test_initialising_again_starts_afresh(data):
    (x, _), _ = data
    def steps(net):
        return [float(q.step.detach()) for q in net.modules() if isinstance(q, LSQActivationQuantizer)]

    model = qat.prepare(load("lenet5").model, "w4a4", "lsq", calibration=[x[:64]])
    qat.initialize(model, [x[64:128]])  # what the first initialisation saw no longer counts
    assert steps(model) == steps(qat.prepare(load("lenet5").model, "w4a4", "lsq", calibration=[x[64:128]]))

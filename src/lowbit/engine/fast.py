"""The fast runner of a ``FLOAT``-mode Program: the same integers as the reference kernels, in fewer passes.

Every value travels as its *centred* codes ``q − z`` held in float32. That is exact while every integer stays
below 2^24 (docs/math.md, E1), which :func:`compile_fast` checks op by op before it agrees to run a program:

- a convolution or linear layer is one PyTorch call on centred codes with the int32 bias inside (padding with
  zeros is padding with the input zero point), then ``acc·m`` rounded half to even and clamped in place — the
  same float32 product and rounding as :func:`lowbit.engine.kernels.requantize`;
- a zero point moves into the clamp bounds (``clamp(round(v) + z, lo, hi) − z = clamp(round(v), lo − z, hi − z)``),
  so codes are never shifted back and forth between ops.

Programs this runner cannot take (``FIXED_POINT`` requantization, a layer whose sums could leave float32's exact
range) run on the reference kernels; :func:`compile_fast` says why.

Example:
    >>> import torch, lowbit
    >>> from lowbit.engine import lower
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    >>> q = lowbit.quantize(model, "w8a8", calibration=[torch.randn(64, 8)], progress=False)
    >>> program = lower(q, torch.randn(1, 8))
    >>> runner, reason = compile_fast(program)
    >>> reason is None
    True
    >>> x = torch.randn(5, 8)
    >>> program.fast = False
    >>> torch.equal(runner(x), program(x))
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from lowbit.engine.conv_algorithm import PreparedFilters, integer_conv
from lowbit.kernels.conv import Algorithm
from lowbit.engine.bits import BitProduct, bit_accumulator, pack_signs_of, plan_packed
from lowbit.engine.islands import island_tensors, run_island
from lowbit.engine.kernels import FLOAT32_EXACT, Requant, float_multiplier
from lowbit.kernels import conv_output_size, maxpool_signs
from lowbit.kernels.sign_ops import pack_at_least, thresholds_for

__all__ = ["compile_fast", "FastRunner"]

Step = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class FastRunner:
    """Precompiled steps over centred float32 codes; ``runner(*inputs)`` returns the program's float outputs.

    Each step is ``(value name, function, names to drop after it)``: values are released after their last reader,
    so freed buffers are reused while they are still in cache.
    """

    def __init__(self, steps: list[tuple[str, Step, tuple[str, ...]]], inputs: list[str], outputs: list[str]) -> None:
        self.steps, self.inputs, self.outputs = steps, inputs, outputs

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        env = {name: _channels_last(x.to(torch.float32)) for name, x in zip(self.inputs, inputs)}
        for name, step, dead in self.steps:
            env[name] = step(env)
            for gone in dead:
                del env[gone]
        outs = tuple(env[name] for name in self.outputs)
        return outs[0] if len(outs) == 1 else outs


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    # oneDNN's convolutions are several times faster on channels-last images here (and steadier): a layout choice,
    # the values are unchanged; element-wise ops keep the layout, reshapes read in logical order
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _requantize_in_place(acc: torch.Tensor, multiplier: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return acc.mul_(multiplier).round_().clamp_(low, high)


def _signs(t: torch.Tensor) -> torch.Tensor:
    return torch.where(t >= 0, 1.0, -1.0)


_SMALL_FILTER = 27  # C_in·kh·kw up to an RGB 3×3 filter: one matrix product beats oneDNN's direct convolution


def _unfolded_conv(op: dict[str, Any], w: torch.Tensor, bias: torch.Tensor | None) -> Step:
    """A convolution with small filters (a first layer) as im2col and one matrix product, channels-last out.

    oneDNN runs a 1-channel 3×3 convolution several times slower than the product of its ``(N·H·W, 9)`` patches
    with the ``(9, C_out)`` filters here; the codes are integers whose sums stay exact in float32, so the order
    of the sums does not change the result.
    """
    x, kernel = op["x"], tuple(w.shape[2:])
    geometry = dict(dilation=tuple(op["dilation"]), padding=tuple(op["padding"]), stride=tuple(op["stride"]))
    filters = w.reshape(w.shape[0], -1).t().contiguous()  # (C_in·kh·kw, C_out) in unfold's (c, i, j) order

    def accumulate(env: dict[str, torch.Tensor]) -> torch.Tensor:
        image = env[x]
        n, _, height, width = image.shape
        oh, ow = conv_output_size(height, width, kernel, geometry["stride"], geometry["padding"], geometry["dilation"])
        patches = F.unfold(image, kernel, **geometry).transpose(1, 2)  # (N, H_out·W_out, C_in·kh·kw)
        out = torch.matmul(patches, filters)
        if bias is not None:
            out += bias
        return out.reshape(n, oh, ow, -1).permute(0, 3, 1, 2)  # NCHW logically, channels-last in memory

    return accumulate


def _algorithm_conv(op: dict[str, Any], tensors: dict[str, torch.Tensor], bias: torch.Tensor | None) -> Step:
    """A conv layer computed by its chosen algorithm on float64 centred codes (filters transformed once), rounded
    to the integers, handed on as float32 channels-last like every other accumulator."""
    w = tensors[op["weight"]].to(torch.float64)
    w = w - tensors[op["weight_zero_point"]].to(torch.float64).reshape(-1, 1, 1, 1)
    x, stride, padding, algorithm = op["x"], tuple(op["stride"]), tuple(op["padding"]), Algorithm(op["algorithm"])
    prepared = PreparedFilters(w, algorithm, padding)

    def accumulate(env: dict[str, torch.Tensor]) -> torch.Tensor:
        acc = integer_conv(env[x], w, stride, padding, algorithm, op["name"], prepared).to(torch.float32)
        if bias is not None:
            acc += bias.view(1, -1, 1, 1)
        return _channels_last(acc)

    return accumulate


def _packed_signs_step(op: dict[str, Any], product: BitProduct, bias: torch.Tensor | None) -> Step:
    """A bit layer writing packed signs: ``acc ≥ ⌈−(correction + factor·bias)⌉`` (docs/math.md B8), with the
    thresholds computed once per output size."""
    x, conv = op["x"], op["op"] == "conv"
    thresholds: dict[Any, torch.Tensor] = {}

    def step(env: dict[str, torch.Tensor]) -> torch.Tensor:
        acc, correction, lead = product(env[x])
        key = lead[1:] if conv else None
        if key not in thresholds:
            total = torch.zeros(1, acc.shape[1], dtype=torch.float64)
            if correction is not None:
                total = total + correction.to(torch.float64)
            if bias is not None:
                total = total + product.factor * bias.to(torch.float64)
            thresholds[key] = thresholds_for(total, acc.dtype)
        return pack_at_least(acc, thresholds[key]).reshape(*lead, -1)

    return step


def _bit_accumulate(op: dict[str, Any], product: BitProduct, bias: torch.Tensor | None, channel: list[int]) -> Step:
    """A bit layer's accumulator plus bias as float32 codes, for a requantized, dequantized or float-sign output."""
    x, conv = op["x"], op["op"] == "conv"

    def accumulate(env: dict[str, torch.Tensor]) -> torch.Tensor:
        acc, correction, lead = product(env[x])
        if correction is not None:
            acc.view(-1, correction.shape[0], acc.shape[1]).add_(correction)
        value = acc.to(torch.float32)
        if product.factor != 1:
            value.div_(product.factor)  # an even integer: exact
        value = value.reshape(*lead, -1)
        if conv:  # (N, H, W, C) memory is NCHW in channels-last: a view, no copy
            value = value.permute(0, 3, 1, 2)
        return value if bias is None else value.add_(bias.reshape(channel))

    return accumulate


def _reads(op: dict[str, Any]) -> list[str]:
    return [op[k] for k in ("x", "a", "b") if k in op] + list(op.get("args", []))


class _Compiler:
    def __init__(self, program: Any) -> None:
        self.program = program
        self.index = 0  # the op being compiled
        # buffers: a reshape is a view of its input, so in-place writes are decided per underlying buffer
        self.root: dict[str, str] = {}
        for op in program.ops:
            self.root[op["y"]] = self.root.get(op["x"], op["x"]) if op["op"] == "reshape" else op["y"]
        self.last_read: dict[str, int] = {}  # buffer → index of the last op that reads it (through any view)
        last_read_value: dict[str, int] = {}  # value name → the same, for releasing the name after its reader
        for i, op in enumerate(program.ops):
            for name in _reads(op):
                self.last_read[self.root.get(name, name)] = last_read_value[name] = i
        self.dead_after: dict[int, list[str]] = {}  # op index → value names nobody reads after it
        for name, i in last_read_value.items():
            if name not in program.outputs:
                self.dead_after.setdefault(i, []).append(name)
        self.kept = {self.root.get(n, n) for n in list(program.inputs) + list(program.outputs)}
        self.zero_points: dict[str, int] = {}  # value name → zero point of its grid (codes are held centred)
        self.bounds: dict[str, int] = {}  # value name → largest |centred code| it can hold
        self.packed = plan_packed(program)  # values held as packed signs between bit-kernel layers

    def _out(self, op: dict[str, Any]) -> tuple[float, float]:
        out = op["out"]
        self.zero_points[op["y"]] = out["zero_point"]
        self.bounds[op["y"]] = max(out["zero_point"] - out["qmin"], out["qmax"] - out["zero_point"])
        return float(out["qmin"] - out["zero_point"]), float(out["qmax"] - out["zero_point"])

    def layer(self, op: dict[str, Any]) -> Step:
        if not op.get("exact_float32"):
            raise _Refused(f"{op['name']}: its sums can exceed float32's exact range")
        t = self.program.tensors
        w = t[op["weight"]].to(torch.float32)
        shape = [-1] + [1] * (w.dim() - 1)
        w = _channels_last((w - t[op["weight_zero_point"]].to(torch.float32).reshape(shape)).contiguous())
        bias = t[op["bias"]].to(torch.float32) if op.get("bias") else None
        # one scale per output channel: axis 1 of a convolution's output, the last axis of a linear layer's
        channel = [1, -1] + [1] * (w.dim() - 2) if op["op"] == "conv" else [-1]
        scales = t[op["weight_scale"]].reshape(channel)
        x = op["x"]
        if op.get("bit_kernel") and (op["op"] == "linear" or op["groups"] == 1):
            product = BitProduct(op, t, self.packed.get(x))
            if op["y"] in self.packed:
                self._out(op)
                return _packed_signs_step(op, product, bias)
            accumulate = _bit_accumulate(op, product, bias, channel)
        elif op.get("bit_kernel"):  # grouped: the input is packed per call, the output is NCHW
            product = bit_accumulator(op, t)
            bias_view = None if bias is None else bias.reshape(channel)

            def accumulate(env: dict[str, torch.Tensor]) -> torch.Tensor:
                acc = product(env[x])
                return acc if bias_view is None else acc.add_(bias_view)
        elif op["op"] == "conv" and op.get("algorithm"):
            accumulate = _algorithm_conv(op, t, bias)
        elif op["op"] == "conv" and w.dim() == 4 and op["groups"] == 1 and w[0].numel() <= _SMALL_FILTER:
            accumulate = _unfolded_conv(op, w, bias)
        elif op["op"] == "conv":
            conv = F.conv1d if w.dim() == 3 else F.conv2d
            stride, padding, dilation, groups = (tuple(op["stride"]), tuple(op["padding"]), tuple(op["dilation"]),
                                                 op["groups"])

            def accumulate(env: dict[str, torch.Tensor]) -> torch.Tensor:
                return conv(env[x], w, bias, stride, padding, dilation, groups)
        else:

            def accumulate(env: dict[str, torch.Tensor]) -> torch.Tensor:
                return F.linear(env[x], w, bias)

        if op["out"] is None:  # a float output: the accumulator dequantized
            dequant = float_multiplier(op["in_scale"], scales)
            return lambda env: accumulate(env).mul_(dequant)
        if op["out"].get("sign"):  # a sign edge: +1 where the accumulator (value / positive scale) is >= 0
            self._out(op)
            if op["y"] in self.packed:
                return lambda env: pack_signs_of(accumulate(env), op["op"] == "conv")
            return lambda env: _signs(accumulate(env))
        multiplier = float_multiplier(op["in_scale"], scales, divide_by=op["out"]["scale"])
        low, high = self._out(op)
        return lambda env: _requantize_in_place(accumulate(env), multiplier, low, high)

    def add(self, op: dict[str, Any]) -> Step:
        out_scale = op["out"]["scale"]
        ra, rb = float_multiplier(op["a_scale"], divide_by=out_scale), float_multiplier(op["b_scale"],
                                                                                         divide_by=out_scale)
        a, b = op["a"], op["b"]
        low, high = self._out(op)

        # a residual add is usually its inputs' last reader: scale them in place instead of allocating
        own_a, own_b = (self._owned(name) and a != b for name in (a, b))

        def step(env: dict[str, torch.Tensor]) -> torch.Tensor:
            total = env[a].mul_(ra) if own_a else env[a] * ra
            total += env[b].mul_(rb) if own_b else env[b] * rb  # two float32 products, one sum: ORT's rounding
            return total.round_().clamp_(low, high)

        return step

    def _owned(self, name: str) -> bool:
        """Whether the op being compiled may overwrite ``name``: the last reader of its buffer, not an input or
        output of the program."""
        buffer = self.root.get(name, name)
        return buffer not in self.kept and self.last_read.get(buffer) == self.index

    def concat(self, op: dict[str, Any]) -> Step:
        ratios = [float_multiplier(scale, divide_by=op["out"]["scale"]) for scale in op["scales"]]
        args, dim = list(op["args"]), op["dim"]
        low, high = self._out(op)
        return lambda env: torch.cat([(env[a] * r).round_().clamp_(low, high) for a, r in zip(args, ratios)], dim)

    def pool(self, op: dict[str, Any]) -> Step:
        x, in_bound = op["x"], self.bounds[op["x"]]
        if op["op"] == "global_avgpool":
            count = None  # known at run time; the bound is checked there
        else:
            count = op["kernel_size"][0] * op["kernel_size"][1]
            if count * in_bound >= FLOAT32_EXACT:
                raise _Refused(f"{op['y']}: window sums can exceed float32's exact range")
        multiplier_for = {}
        low, high = self._out(op)
        in_scale, out_scale = op["in_scale"], op["out"]["scale"]

        def multiplier(n: int) -> torch.Tensor:
            if n not in multiplier_for:
                multiplier_for[n] = float_multiplier(in_scale, divide_by=float_multiplier(out_scale, n))
            return multiplier_for[n]

        if count is None:
            def step(env: dict[str, torch.Tensor]) -> torch.Tensor:
                v = env[x]
                n = v[0, 0].numel()
                if n * in_bound >= FLOAT32_EXACT:
                    raise OverflowError(f"{op['y']}: a global sum of {n} codes can exceed float32's exact range")
                return _requantize_in_place(v.sum(dim=tuple(range(2, v.dim())), keepdim=True), multiplier(n),
                                            low, high)
            return step
        kernel, stride, padding = tuple(op["kernel_size"]), tuple(op["stride"]), tuple(op["padding"])
        return lambda env: _requantize_in_place(F.avg_pool2d(env[x], kernel, stride, padding, divisor_override=1),
                                                multiplier(count), low, high)

    def same_grid(self, op: dict[str, Any]) -> Step:
        x = op["x"]
        if op["op"] == "reshape" and x not in self.zero_points:  # a float value
            return lambda env: env[x].reshape(env[x].shape[0], *op["shape"])
        self.zero_points[op["y"]], self.bounds[op["y"]] = self.zero_points[x], self.bounds[x]
        if x in self.packed:  # packed signs (plan_packed): OR of words, or the pixels' words end to end
            if op["op"] == "maxpool":
                args = (op["kernel_size"], op["stride"], op["padding"], op["dilation"], op["ceil_mode"])
                return lambda env: maxpool_signs(env[x], *args)
            return lambda env: env[x].reshape(env[x].shape[0], -1)
        if op["op"] == "clamp":
            low, high = float(op["min"] - self.zero_points[x]), float(op["max"] - self.zero_points[x])
            return lambda env: env[x].clamp(low, high)
        if op["op"] == "maxpool":  # padding is −inf in max_pool2d: it never wins, as in the reference
            args = (op["kernel_size"], op["stride"], op["padding"], op["dilation"], op["ceil_mode"])
            return lambda env: F.max_pool2d(env[x], *args)
        shape = op["shape"]
        return lambda env: env[x].reshape(env[x].shape[0], *shape)

    def step(self, op: dict[str, Any]) -> Step:
        kind = op["op"]
        if kind == "quantize" and op["out"].get("sign"):
            self._out(op)
            x = op["x"]
            return lambda env: _signs(env[x])
        if kind == "quantize":
            scale = torch.tensor(op["out"]["scale"], dtype=torch.float32)
            low, high, x = *self._out(op), op["x"]
            return lambda env: torch.round(env[x] / scale).clamp_(low, high)
        if kind == "dequantize":
            scale, x = torch.tensor(op["scale"], dtype=torch.float32), op["x"]
            return lambda env: env[x] * scale
        if kind in ("conv", "linear"):
            return self.layer(op)
        if kind == "add":
            return self.add(op)
        if kind == "concat":
            return self.concat(op)
        if kind in ("global_avgpool", "avgpool"):
            return self.pool(op)
        if kind in ("clamp", "maxpool", "reshape"):
            return self.same_grid(op)
        if kind == "float":
            args, tensors = list(op["args"]), island_tensors(op, self.program.tensors)
            return lambda env: run_island(op, [env[a] for a in args], tensors)
        raise _Refused(f"op {kind!r} has no fast kernel")


class _Refused(Exception):
    pass


def compile_fast(program: Any) -> tuple[FastRunner | None, str | None]:
    """A :class:`FastRunner` for ``program``, or ``None`` and the reason it must run on the reference kernels.

    The runner copies the weights it needs (centred, float32); later edits to ``program.tensors`` do not reach it.
    """
    if program.mode is not Requant.FLOAT:
        return None, f"{program.mode.value} requantization runs on the reference kernels"
    compiler = _Compiler(program)
    steps = []
    try:
        for compiler.index, op in enumerate(program.ops):
            steps.append((op["y"], compiler.step(op), tuple(compiler.dead_after.get(compiler.index, ()))))
    except _Refused as why:
        return None, str(why)
    return FastRunner(steps, list(program.inputs), list(program.outputs)), None

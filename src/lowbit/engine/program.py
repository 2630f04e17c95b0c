"""A Program: a flat list of integer ops over named values, run by the reference kernels, saved as JSON +
safetensors.

Values are int32 code tensors (their grid recorded in the op that made them) or float tensors (the model's
inputs, float islands and float outputs). Ops: ``quantize``, ``dequantize``, ``conv``, ``linear``, ``add``,
``concat``, ``clamp``, ``maxpool``, ``global_avgpool``, ``avgpool``, ``reshape`` and ``float`` (an island op from
:mod:`lowbit.engine.islands` on dequantized values). :func:`lowbit.engine.lower` builds one from a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from lowbit.engine.conv_algorithm import eligibility
from lowbit.kernels.conv import Algorithm
from lowbit.engine import kernels as K
from lowbit.engine.fast import FastRunner, compile_fast
from lowbit.engine.islands import ISLANDS, island_tensors, run_island
from lowbit.engine.kernels import Requant

__all__ = ["Program", "FORMAT"]

FORMAT = "lowbit-program/1"
_ALGORITHMS = {"direct", "im2col", "winograd_2x2_3x3", "winograd_4x4_3x3", "fft"}
_OPS = {"quantize", "dequantize", "conv", "linear", "add", "concat", "clamp", "maxpool", "global_avgpool", "avgpool",
        "reshape", "float"}
_JSON, _TENSORS = "program.json", "program.safetensors"


@dataclass
class Program:
    """Integer ops in execution order; ``program(*inputs)`` runs them and returns the float outputs."""

    ops: list[dict[str, Any]]
    tensors: dict[str, torch.Tensor]
    inputs: list[str]
    outputs: list[str]
    mode: Requant = Requant.FLOAT
    notes: list[str] = field(default_factory=list)
    # True: the fast runner (lowbit.engine.fast) when the program qualifies, else float32 sums in the reference
    # kernels where they are provably exact (ops marked ``exact_float32`` by lower); False: the float64 reference
    # everywhere. All give the same integers.
    fast: bool = True
    _runner: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def fast_runner(self) -> tuple[FastRunner | None, str | None]:
        """The compiled fast runner (built once) or ``None`` and why this program runs on the reference kernels."""
        if self._runner is None:
            self._runner = compile_fast(self)
        return self._runner

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.inputs):
            raise ValueError(f"the program takes {len(self.inputs)} inputs, got {len(inputs)}")
        if self.fast:
            runner, _ = self.fast_runner
            if runner is not None:
                return runner(*inputs)
        env: dict[str, torch.Tensor] = {name: x.to(torch.float32) for name, x in zip(self.inputs, inputs)}
        for op in self.ops:
            env[op["y"]] = self._run(op, env)
        outs = tuple(env[name] for name in self.outputs)
        return outs[0] if len(outs) == 1 else outs

    def _run(self, op: dict[str, Any], env: dict[str, torch.Tensor]) -> torch.Tensor:
        kind, t, mode = op["op"], self.tensors, self.mode
        x = env[op["x"]] if "x" in op else None
        out = op.get("out")
        if kind == "quantize" and out.get("sign"):  # a sign edge: 0 ↦ +1
            return torch.where(x >= 0, 1, -1).to(torch.int32)
        if kind == "quantize":  # float → codes, true division and half-to-even as QuantizeLinear
            q = torch.round(x / torch.tensor(out["scale"], dtype=torch.float32)) + out["zero_point"]
            return torch.clamp(q, out["qmin"], out["qmax"]).to(torch.int32)
        if kind == "dequantize":
            return (x.to(torch.float32) - op["zero_point"]) * torch.tensor(op["scale"], dtype=torch.float32)
        if kind in ("conv", "linear"):
            w, w_zp = t[op["weight"]], t[op["weight_zero_point"]]
            bias = t[op["bias"]] if op.get("bias") else None
            exact = bool(op.get("exact_float32")) and self.fast
            if kind == "conv":
                acc = K.conv_accumulate(x, op["in_zero_point"], w, w_zp, bias, tuple(op["stride"]),
                                        tuple(op["padding"]), tuple(op["dilation"]), op["groups"], op["name"], exact,
                                        op.get("algorithm"))
            else:
                acc = K.linear_accumulate(x, op["in_zero_point"], w, w_zp, bias, op["name"], exact)
            if exact and mode is Requant.FIXED_POINT:
                acc = acc.to(torch.int64)  # exact integers, held as float32
            # one scale per output channel: axis 1 of a convolution's output, the last axis of a linear layer's
            w_scale = t[op["weight_scale"]].reshape([1, -1] + [1] * (acc.dim() - 2) if kind == "conv" else [-1])
            if out is None:  # a float output: the accumulator dequantized, never re-quantized
                return acc.to(torch.float32) * K.float_multiplier(op["in_scale"], w_scale)
            if out.get("sign"):  # a sign edge: +1 where the value acc·s_x·s_w (s > 0) is >= 0
                return torch.where(acc >= 0, 1, -1).to(torch.int32)
            multiplier = K.float_multiplier(op["in_scale"], w_scale, divide_by=out["scale"])
            return K.requantize(acc, multiplier, out["zero_point"], out["qmin"], out["qmax"], mode)
        if kind == "add":
            a, b = env[op["a"]], env[op["b"]]
            return K.add(a, op["a_scale"], op["a_zero_point"], b, op["b_scale"], op["b_zero_point"], out["scale"],
                         out["zero_point"], out["qmin"], out["qmax"], mode)
        if kind == "concat":
            parts = [(env[name], scale, zp) for name, scale, zp in zip(op["args"], op["scales"], op["zero_points"])]
            return K.concat(parts, op["dim"], out["scale"], out["zero_point"], out["qmin"], out["qmax"], mode)
        if kind == "clamp":
            return torch.clamp(x, op["min"], op["max"])
        if kind == "maxpool":  # max of codes is the code of the max (monotone map); padding never wins
            pooled = F.max_pool2d(x.to(torch.float64), op["kernel_size"], op["stride"], op["padding"],
                                  op["dilation"], op["ceil_mode"])
            return pooled.to(torch.int32)
        if kind == "global_avgpool":
            return K.global_avg_pool(x, op["in_scale"], op["in_zero_point"], out["scale"], out["zero_point"],
                                     out["qmin"], out["qmax"], mode)
        if kind == "avgpool":
            return K.avg_pool(x, tuple(op["kernel_size"]), tuple(op["stride"]), tuple(op["padding"]), op["in_scale"],
                              op["in_zero_point"], out["scale"], out["zero_point"], out["qmin"], out["qmax"], mode)
        if kind == "reshape":
            return x.reshape(x.shape[0], *op["shape"])
        if kind == "float":
            return run_island(op, [env[a] for a in op["args"]], island_tensors(op, t))
        raise ValueError(f"unknown op {kind!r}")

    def save(self, folder: str | Path) -> Path:
        """Write ``program.json`` and ``program.safetensors`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(folder / _TENSORS))
        meta = {"format": FORMAT, "mode": self.mode.value, "inputs": self.inputs, "outputs": self.outputs,
                "ops": self.ops, "notes": self.notes}
        (folder / _JSON).write_text(json.dumps(meta, indent=1) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Program:
        """Read a folder written by :meth:`save`.

        Raises:
            ValueError: missing files, another format, a truncated or corrupt tensor file, unknown ops, or ops
                that name tensors or values that are not there — each named.
        """
        folder = Path(folder)
        if not (folder / _JSON).is_file() or not (folder / _TENSORS).is_file():
            raise ValueError(f"{folder} is not a lowbit program (needs {_JSON} and {_TENSORS})")
        try:
            meta = json.loads((folder / _JSON).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{folder / _JSON} is not valid JSON: {err}") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{folder / _JSON}: format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                             f"this lowbit reads {FORMAT!r}")
        try:
            tensors = load_file(str(folder / _TENSORS))
        except Exception as err:  # safetensors raises its own error types for truncated or corrupt files
            raise ValueError(f"{folder / _TENSORS} cannot be read (truncated or corrupt?): {err}") from err
        try:
            program = cls(list(meta["ops"]), tensors, list(meta["inputs"]), list(meta["outputs"]),
                          Requant(meta["mode"]), list(meta.get("notes", [])))
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(f"{folder / _JSON} is malformed: {err!r}") from err
        program.validate(str(folder))
        return program

    def set_conv_algorithm(self, algorithm: str, layers: list[str] | None = None) -> list[str]:
        """Compute the named conv layers (default: every layer ``algorithm`` can run) by ``algorithm``.

        ``algorithm`` is a :class:`lowbit.kernels.conv.Algorithm` value (``"winograd_2x2_3x3"``, ``"fft"``, …) or
        ``"default"`` to go back to the engine's own convolution. The integers do not change
        (:mod:`lowbit.engine.conv_algorithm`); the choice is saved with the program.

        Returns:
            The names of the layers set.

        Raises:
            ValueError: an unknown algorithm or layer name, or a named layer the algorithm cannot run (why).
        """
        convs = {op["name"]: op for op in self.ops if op["op"] == "conv"}
        unknown = [name for name in layers or [] if name not in convs]
        if unknown:
            raise ValueError(f"set_conv_algorithm: no conv layers named {unknown}; conv layers: {sorted(convs)}")
        if algorithm == "default":
            chosen = list(layers) if layers is not None else list(convs)
            for name in chosen:
                convs[name].pop("algorithm", None)
        else:
            try:
                kind = Algorithm(algorithm)
            except ValueError:
                raise ValueError(f"set_conv_algorithm: algorithm must be 'default' or one of "
                                 f"{[a.value for a in Algorithm]}, got {algorithm!r}") from None
            why = {name: eligibility(op, tuple(self.tensors[op["weight"]].shape), kind) for name, op in convs.items()}
            if layers is not None:
                refused = {name: why[name] for name in layers if why[name]}
                if refused:
                    raise ValueError(f"set_conv_algorithm: {kind.value} cannot run {refused}")
            chosen = list(layers) if layers is not None else [name for name, reason in why.items() if reason is None]
            for name in chosen:
                convs[name]["algorithm"] = kind.value
        self._runner = None  # recompile with the new choice
        return chosen

    def validate(self, where: str = "program") -> None:
        """Check that every op is known and names only tensors and values that exist before it."""
        known = set(self.inputs)
        for i, op in enumerate(self.ops):
            if not isinstance(op, dict) or op.get("op") not in _OPS or "y" not in op:
                raise ValueError(f"{where}: op {i} is not a known op: {op!r}"[:300])
            if op.get("algorithm") is not None and op.get("algorithm") not in _ALGORITHMS:
                raise ValueError(f"{where}: op {i} names an unknown convolution algorithm {op['algorithm']!r}")
            if op["op"] == "float" and op.get("fn") not in ISLANDS:
                raise ValueError(f"{where}: op {i} is an unknown float island {op.get('fn')!r}")
            for value in [op[k] for k in ("x", "a", "b") if k in op] + list(op.get("args", [])):
                if value not in known:
                    raise ValueError(f"{where}: op {i} ({op['op']}) reads {value!r}, which nothing computed before it")
            needed = [op[k] for k in ("weight", "weight_scale", "weight_zero_point", "bias") if op.get(k)]
            for tensor in needed + list(op.get("tensors", {}).values()):
                if tensor not in self.tensors:
                    raise ValueError(f"{where}: op {i} ({op['op']}) needs tensor {tensor!r}, missing from the file")
            known.add(op["y"])
        missing = [o for o in self.outputs if o not in known]
        if missing:
            raise ValueError(f"{where}: outputs {missing} are never computed")

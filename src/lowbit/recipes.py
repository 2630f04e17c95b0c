"""Recipes: what to quantize and how, as typed data — presets by name, YAML/JSON files, ordered overrides.

A :class:`Recipe` names a :class:`Mode`, the weight and activation :class:`~lowbit.spec.QuantSpec`, the observers,
the precision of the first and last layers, and :class:`Override` s that apply to layers whose names match
``include`` patterns (``fnmatch``) and not ``exclude`` ones — later overrides win. Files are read strictly:
an unknown key is an error that names it.

Example:
    >>> r = preset("w4-g128")
    >>> r.mode, r.weight.bits, r.weight.granularity
    (<Mode.WEIGHT_ONLY: 'weight_only'>, 4, PerGroup(axis=0, size=128))
    >>> Recipe.from_dict({"mode": "static", "wieght": {"bits": 4}})
    Traceback (most recent call last):
    ...
    ValueError: recipe: unknown key 'wieght' (known: activation, activation_observer, first_last_bits, input_observer, mode, name, observer_options, overrides, per_token, quantize_output, rounding_options, transforms, weight, weight_observer, weight_rounding)
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lowbit.transforms.correct_bias import BiasCorrection
from lowbit.spec import Granularity, PerChannel, PerGroup, PerTensor, QuantSpec, Rounding, ScaleKind

__all__ = ["Mode", "ObserverKind", "WeightRounding", "ROUNDING_OPTIONS", "Override", "LayerPlan", "Recipe", "Transforms", "preset", "PRESETS", "load_recipe"]


class Mode(enum.Enum):
    """What runs in low precision.

    ``WEIGHT_ONLY``: integer weights, float activations. ``DYNAMIC``: integer weights, activations quantized
    per batch at run time. ``STATIC``: activation ranges calibrated once. ``FP16`` / ``BF16``: float casts.
    """

    WEIGHT_ONLY = "weight_only"
    DYNAMIC = "dynamic"
    STATIC = "static"
    FP16 = "fp16"
    BF16 = "bf16"


class ObserverKind(enum.Enum):
    """Range estimators from :mod:`lowbit.observers`, by name."""

    MINMAX = "minmax"
    MOVING_AVERAGE = "moving_average"
    PERCENTILE = "percentile"
    ENTROPY = "entropy"
    MSE = "mse"
    ACIQ = "aciq"


class WeightRounding(enum.Enum):
    """How weight codes are chosen on the grid the weight observer set: ``NEAREST`` rounds each weight alone;
    ``GPTQ`` and ``ADAROUND`` choose codes that keep each layer's output on calibration inputs closest to the
    float layer's (:mod:`lowbit.flows.rounding`)."""

    NEAREST = "nearest"
    GPTQ = "gptq"
    ADAROUND = "adaround"


# every option Recipe.rounding_options may set, with its default (samples: inputs kept per layer for AdaRound;
# steps/batch_size/lr/reg/warm_start: AdaRound's optimisation; block/damp: GPTQ's; seed: mini-batch draws)
ROUNDING_OPTIONS: dict[str, Any] = {"samples": 512, "steps": 1000, "batch_size": 32, "lr": 1e-2, "reg": 0.01,
                                    "warm_start": 0.2, "block": 128, "damp": 0.01, "seed": 0}


def _enum(cls: type[enum.Enum], value: Any, where: str) -> Any:
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(m.value for m in cls)
        raise ValueError(f"{where}: {value!r} is not one of {known}") from None


def _strict(data: Any, known: set[str], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    for key in data:
        if key not in known:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    return data


def granularity_to_dict(g: Granularity) -> dict[str, Any]:
    """``PerTensor()`` → ``{"kind": "per_tensor"}``; ``PerGroup(0, 128)`` → ``{"kind": "per_group", "axis": 0, "size": 128}``."""
    if isinstance(g, PerTensor):
        return {"kind": "per_tensor"}
    if isinstance(g, PerChannel):
        return {"kind": "per_channel", "axis": g.axis}
    return {"kind": "per_group", "axis": g.axis, "size": g.size}


def granularity_from_dict(data: Any, where: str) -> Granularity:
    if isinstance(data, str):
        data = {"kind": data}
    kind = _strict(data, {"kind", "axis", "size"}, where).get("kind")
    if kind == "per_tensor":
        _strict(data, {"kind"}, where)
        return PerTensor()
    if kind == "per_channel":
        _strict(data, {"kind", "axis"}, where)
        return PerChannel(axis=data.get("axis", 0))
    if kind == "per_group":
        return PerGroup(axis=data.get("axis", 0), size=data.get("size", 128))
    raise ValueError(f"{where}.kind: {kind!r} is not one of per_tensor, per_channel, per_group")


_SPEC_KEYS = {f.name for f in dataclasses.fields(QuantSpec)}


def spec_to_dict(spec: QuantSpec) -> dict[str, Any]:
    """A JSON-ready dict of every field of ``spec``."""
    return {
        "bits": spec.bits, "signed": spec.signed, "symmetric": spec.symmetric, "narrow_range": spec.narrow_range,
        "granularity": granularity_to_dict(spec.granularity), "scale_kind": spec.scale_kind.value,
        "rounding": spec.rounding.value,
    }


def spec_from_dict(data: Any, where: str) -> QuantSpec:
    """Inverse of :func:`spec_to_dict`; missing keys take QuantSpec's defaults, unknown keys are errors."""
    data = dict(_strict(data, _SPEC_KEYS, where))
    if "granularity" in data:
        data["granularity"] = granularity_from_dict(data["granularity"], f"{where}.granularity")
    if "scale_kind" in data:
        data["scale_kind"] = _enum(ScaleKind, data["scale_kind"], f"{where}.scale_kind")
    if "rounding" in data:
        data["rounding"] = _enum(Rounding, data["rounding"], f"{where}.rounding")
    try:
        return QuantSpec(**data)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


@dataclass(frozen=True)
class Override:
    """Settings for layers whose qualified name matches an ``include`` pattern and no ``exclude`` pattern.

    ``None`` fields keep what earlier rules chose; ``skip=True`` keeps the layer in float.

    Example:
        >>> o = Override(include=("layers.*",), exclude=("*.shortcut.*",), weight=QuantSpec(bits=4))
        >>> o.matches("layers.0.conv1"), o.matches("layers.3.shortcut.0"), o.matches("fc")
        (True, False, False)
    """

    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    weight: QuantSpec | None = None
    activation: QuantSpec | None = None
    skip: bool | None = None

    def __post_init__(self) -> None:
        for name in ("include", "exclude"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"Override.{name} must be a tuple of name patterns, got {value!r}")
            object.__setattr__(self, name, tuple(value))

    def matches(self, layer: str) -> bool:
        hit = any(fnmatch.fnmatchcase(layer, p) for p in self.include)
        return hit and not any(fnmatch.fnmatchcase(layer, p) for p in self.exclude)


@dataclass(frozen=True)
class Transforms:
    """Float-model surgery :func:`lowbit.quantize` applies before quantizing (issue #5), in this order.

    Args:
        equalize: cross-layer equalization (:func:`lowbit.transforms.equalize`).
        relu6_to_relu: with ``equalize``, replace the ReLU6 between layers of a pair by ReLU so the pair can be
            equalized (changes the float model where activations exceed 6, as the DFQ paper accepts).
        absorb_bias: high-bias absorption (:func:`lowbit.transforms.absorb_bias`).
        correct_bias: ``"analytic"`` (from BatchNorm statistics, no data) or ``"empirical"`` (from the
            calibration batches) bias correction for the recipe's weight quantization; ``None``: off.
        split_outliers: outlier channel splitting's expand ratio in ``(0, 1]`` (:func:`lowbit.transforms.split_outliers`,
            applied after equalization and absorption, before bias correction); ``None``: off.
        smoothquant: SmoothQuant's ``α`` in ``[0, 1]`` for the Linear layers that read a LayerNorm output
            (:func:`lowbit.transforms.smooth_quant`, from the calibration batches); ``None``: off. Also works on
            models quantized layer by layer (no trace needed).
        smoothquant_include / smoothquant_exclude: name patterns (``fnmatch``) choosing the layers SmoothQuant
            smooths instead of the LayerNorm readers, e.g. adding a transformer's second feed-forward layer.

    Example:
        >>> Transforms(equalize=True, correct_bias="analytic").correct_bias
        <BiasCorrection.ANALYTIC: 'analytic'>
    """

    equalize: bool = False
    relu6_to_relu: bool = False
    absorb_bias: bool = False
    correct_bias: BiasCorrection | None = None
    smoothquant: float | None = None
    split_outliers: float | None = None
    smoothquant_include: tuple[str, ...] | None = None
    smoothquant_exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("smoothquant_include", "smoothquant_exclude"):
            value = getattr(self, name)
            if value is None and name == "smoothquant_include":
                continue
            if isinstance(value, str) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"Recipe.transforms.{name} must be a list of name patterns, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        if self.split_outliers is not None and (isinstance(self.split_outliers, bool) or not isinstance(
                self.split_outliers, (int, float)) or not 0.0 < self.split_outliers <= 1.0):
            raise ValueError(f"Recipe.transforms.split_outliers must be null or an expand ratio in (0, 1], got "
                             f"{self.split_outliers!r}")
        if self.smoothquant is not None and (isinstance(self.smoothquant, bool) or not isinstance(
                self.smoothquant, (int, float)) or not 0.0 <= self.smoothquant <= 1.0):
            raise ValueError(f"Recipe.transforms.smoothquant must be null or an alpha in [0, 1], got "
                             f"{self.smoothquant!r}")
        for name in ("equalize", "relu6_to_relu", "absorb_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"Recipe.transforms.{name} must be a bool, got {getattr(self, name)!r}")
        if self.relu6_to_relu and not self.equalize:
            raise ValueError("Recipe.transforms.relu6_to_relu needs equalize: true (it only serves equalization)")
        if self.correct_bias is not None:
            object.__setattr__(self, "correct_bias",
                               _enum(BiasCorrection, self.correct_bias, "Recipe.transforms.correct_bias"))

    @property
    def any(self) -> bool:
        return self.needs_graph or self.smoothquant is not None

    @property
    def needs_graph(self) -> bool:
        """The transforms that find layer pairs in a traced graph."""
        return self.equalize or self.absorb_bias or self.correct_bias is not None or self.split_outliers is not None

    def to_dict(self) -> dict[str, Any]:
        return {"equalize": self.equalize, "relu6_to_relu": self.relu6_to_relu, "absorb_bias": self.absorb_bias,
                "correct_bias": self.correct_bias.value if self.correct_bias else None,
                "smoothquant": self.smoothquant, "split_outliers": self.split_outliers,
                "smoothquant_include": None if self.smoothquant_include is None else list(self.smoothquant_include),
                "smoothquant_exclude": list(self.smoothquant_exclude)}


@dataclass(frozen=True)
class LayerPlan:
    """What a recipe decides for one layer: its weight and activation specs, or ``skip`` (stays float)."""

    weight: QuantSpec | None
    activation: QuantSpec | None
    skip: bool = False


@dataclass(frozen=True)
class Recipe:
    """A complete, validated quantization recipe (see the module docstring).

    Args:
        name: label for reports.
        mode: :class:`Mode`.
        weight: weight grid (``None`` for float modes).
        activation: activation grid for ``STATIC``/``DYNAMIC`` (``None`` otherwise).
        weight_observer / activation_observer: :class:`ObserverKind`.
        input_observer: observer for the model's input edge. Min/max by default: the input's range is the data's
            known range, and histogram rules can fail on it (an image's constant background is a spike that
            makes the entropy rule clip every foreground pixel).
        observer_options: keyword arguments for the activation observer (e.g. ``{"percentile": 99.99}``).
        per_token: dynamic mode only: each token (row along the last dimension) gets its own activation qparams
            — what transformer activations, whose outlier dimensions vary by token, need.
        first_last_bits: if set, the first and last quantized layers keep this weight/activation width
            (standard practice below 8 bits); ``None`` treats them like the rest.
        quantize_output: static mode: also put the model's outputs on an 8-bit grid. Off by default: an output is
            read as float, so integer execution dequantizes the last accumulator directly, and rounding logits to
            a grid only loses information (it flips close top-2 decisions).
        overrides: applied in order; later ones win.
        transforms: :class:`Transforms` applied to the float model first (graph mode only).
        weight_rounding: :class:`WeightRounding`; learned rounding needs calibration batches, also for
            weight-only recipes.
        rounding_options: settings of the learned rounding (:data:`lowbit.flows.rounding.ROUNDING_OPTIONS`:
            ``samples``, ``steps``, ``batch_size``, ``lr``, ``reg``, ``warm_start``, ``block``, ``damp``, ``seed``).

    Raises:
        ValueError: naming the field and the value.
    """

    name: str = "custom"
    mode: Mode = Mode.STATIC
    weight: QuantSpec | None = field(default_factory=lambda: QuantSpec(bits=8, granularity=PerChannel(0), narrow_range=True))
    activation: QuantSpec | None = field(default_factory=lambda: QuantSpec(bits=8, signed=False, symmetric=False))
    weight_observer: ObserverKind = ObserverKind.MINMAX
    activation_observer: ObserverKind = ObserverKind.MINMAX
    input_observer: ObserverKind = ObserverKind.MINMAX
    observer_options: dict[str, Any] = field(default_factory=dict)
    per_token: bool = False
    first_last_bits: int | None = None
    quantize_output: bool = False
    overrides: tuple[Override, ...] = ()
    transforms: Transforms = field(default_factory=Transforms)
    weight_rounding: WeightRounding = WeightRounding.NEAREST
    rounding_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", _enum(Mode, self.mode, "Recipe.mode"))
        rounding = _enum(WeightRounding, self.weight_rounding, "Recipe.weight_rounding")
        object.__setattr__(self, "weight_rounding", rounding)
        if rounding is not WeightRounding.NEAREST and self.transforms.correct_bias is not None:
            # bias correction subtracts the mean error of round-to-nearest codes, which learned codes no longer have
            raise ValueError(f"Recipe.weight_rounding {rounding.value!r} and transforms.correct_bias "
                             f"{self.transforms.correct_bias.value!r} do not combine: bias correction assumes "
                             "round-to-nearest weights; choose one")
        if not isinstance(self.rounding_options, dict):
            raise ValueError(f"Recipe.rounding_options must be a mapping, got {self.rounding_options!r}")
        for key in self.rounding_options:
            if key not in ROUNDING_OPTIONS:
                raise ValueError(f"Recipe.rounding_options: unknown key {key!r} (known: {', '.join(ROUNDING_OPTIONS)})")
        if not isinstance(self.transforms, Transforms):
            raise ValueError(f"Recipe.transforms must be a Transforms, got {self.transforms!r}")
        object.__setattr__(self, "weight_observer", _enum(ObserverKind, self.weight_observer, "Recipe.weight_observer"))
        for name in ("activation_observer", "input_observer"):
            object.__setattr__(self, name, _enum(ObserverKind, getattr(self, name), f"Recipe.{name}"))
        integer = self.mode in (Mode.WEIGHT_ONLY, Mode.DYNAMIC, Mode.STATIC)
        if integer and self.weight is None:
            raise ValueError(f"Recipe.weight is required for mode {self.mode.value}")
        if self.mode in (Mode.DYNAMIC, Mode.STATIC) and self.activation is None:
            raise ValueError(f"Recipe.activation is required for mode {self.mode.value}")
        if self.first_last_bits is not None and (
            not isinstance(self.first_last_bits, int) or not 2 <= self.first_last_bits <= 16
        ):
            raise ValueError(f"Recipe.first_last_bits must be None or an int in 2..16, got {self.first_last_bits!r}")
        if not isinstance(self.per_token, bool) or (self.per_token and self.mode is not Mode.DYNAMIC):
            raise ValueError(f"Recipe.per_token must be a bool and needs mode dynamic, got {self.per_token!r} "
                             f"with mode {self.mode.value}")
        if not isinstance(self.quantize_output, bool):
            raise ValueError(f"Recipe.quantize_output must be a bool, got {self.quantize_output!r}")
        if not isinstance(self.observer_options, dict):
            raise ValueError(f"Recipe.observer_options must be a mapping, got {self.observer_options!r}")
        object.__setattr__(self, "overrides", tuple(self.overrides))
        for o in self.overrides:
            if not isinstance(o, Override):
                raise ValueError(f"Recipe.overrides must hold Override objects, got {o!r}")

    def plan(self, layer: str, first: bool = False, last: bool = False) -> LayerPlan:
        """The specs for ``layer`` after first/last-layer precision and every matching override, in order."""
        weight, activation, skip = self.weight, self.activation, False
        if (first or last) and self.first_last_bits is not None:
            weight = dataclasses.replace(weight, bits=self.first_last_bits) if weight else None
            activation = dataclasses.replace(activation, bits=self.first_last_bits) if activation else None
        for o in self.overrides:
            if o.matches(layer):
                weight = o.weight if o.weight is not None else weight
                activation = o.activation if o.activation is not None else activation
                skip = o.skip if o.skip is not None else skip
        return LayerPlan(weight, activation, skip)

    # --- files -----------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON/YAML-ready dict that :meth:`from_dict` reads back to an equal recipe."""
        return {
            "name": self.name,
            "mode": self.mode.value,
            "weight": spec_to_dict(self.weight) if self.weight else None,
            "activation": spec_to_dict(self.activation) if self.activation else None,
            "weight_observer": self.weight_observer.value,
            "activation_observer": self.activation_observer.value,
            "input_observer": self.input_observer.value,
            "observer_options": dict(self.observer_options),
            "per_token": self.per_token,
            "first_last_bits": self.first_last_bits,
            "quantize_output": self.quantize_output,
            "overrides": [
                {"include": list(o.include), "exclude": list(o.exclude),
                 "weight": spec_to_dict(o.weight) if o.weight else None,
                 "activation": spec_to_dict(o.activation) if o.activation else None, "skip": o.skip}
                for o in self.overrides
            ],
            "transforms": self.transforms.to_dict(),
            "weight_rounding": self.weight_rounding.value,
            "rounding_options": dict(self.rounding_options),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "recipe") -> Recipe:
        """Build a recipe from a mapping; unknown keys anywhere are errors that name them."""
        data = dict(_strict(data, {f.name for f in dataclasses.fields(cls)}, where))
        enums = (("mode", Mode), ("weight_observer", ObserverKind), ("activation_observer", ObserverKind),
                 ("input_observer", ObserverKind), ("weight_rounding", WeightRounding))
        for key, kind in enums:
            if key in data:
                data[key] = _enum(kind, data[key], f"{where}.{key}")
        for key in ("weight", "activation"):
            if data.get(key) is not None:
                data[key] = spec_from_dict(data[key], f"{where}.{key}")
        overrides = []
        for i, raw in enumerate(data.get("overrides") or []):
            o = dict(_strict(raw, {f.name for f in dataclasses.fields(Override)}, f"{where}.overrides[{i}]"))
            for key in ("weight", "activation"):
                if o.get(key) is not None:
                    o[key] = spec_from_dict(o[key], f"{where}.overrides[{i}].{key}")
            for key in ("include", "exclude"):
                if isinstance(o.get(key), str):
                    o[key] = (o[key],)  # a single pattern, not its characters
                elif key in o:
                    o[key] = tuple(o[key])
            overrides.append(Override(**o))
        data["overrides"] = tuple(overrides)
        if data.get("transforms") is not None:
            raw = _strict(data["transforms"], {f.name for f in dataclasses.fields(Transforms)}, f"{where}.transforms")
            data["transforms"] = Transforms(**raw)
        else:
            data.pop("transforms", None)
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write as YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(
            self.to_dict(), indent=1
        )
        path.write_text(text)


def load_recipe(source: str | Path | Recipe) -> Recipe:
    """A recipe from a preset name, a ``.yaml``/``.yml``/``.json`` file, or a :class:`Recipe` (returned as is).

    Raises:
        ValueError: unknown preset (listing the presets), unreadable file content, or unknown keys.
    """
    if isinstance(source, Recipe):
        return source
    text = str(source)
    if text in PRESETS:
        return PRESETS[text]
    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ValueError(f"recipe file {path} does not exist")
        data = yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text())
        return Recipe.from_dict(data, where=path.name)
    raise ValueError(f"unknown recipe {text!r}: use a preset ({', '.join(PRESETS)}) or a .yaml/.json file")


def preset(name: str) -> Recipe:
    """A preset recipe by name (see :data:`PRESETS`)."""
    return load_recipe(name)


_W8 = QuantSpec(bits=8, granularity=PerChannel(0), narrow_range=True)
_A8 = QuantSpec(bits=8, signed=False, symmetric=False)
# The named recipes (`lowbit list`), by name.
PRESETS: dict[str, Recipe] = {
    "w8a8": Recipe("w8a8", Mode.STATIC, _W8, _A8),
    "w8a8-pertensor": Recipe("w8a8-pertensor", Mode.STATIC, QuantSpec(bits=8, narrow_range=True), _A8),
    "w8-dynamic": Recipe("w8-dynamic", Mode.DYNAMIC, _W8, _A8),
    "w8-dynamic-token": Recipe("w8-dynamic-token", Mode.DYNAMIC, _W8, _A8, per_token=True),
    "w8": Recipe("w8", Mode.WEIGHT_ONLY, _W8, None),
    "w4-g128": Recipe("w4-g128", Mode.WEIGHT_ONLY, QuantSpec(bits=4, granularity=PerGroup(0, 128)), None,
                      weight_observer=ObserverKind.MSE),
    "w4a8": Recipe("w4a8", Mode.STATIC, QuantSpec(bits=4, granularity=PerChannel(0)), _A8,
                   weight_observer=ObserverKind.MSE, first_last_bits=8),
    # low-bit static recipes for QAT (and PTQ baselines): per-channel symmetric weights on the full signed grid
    # ([−8, 7] at 4 bits, LSQ's), first and last layers at 8 bits, MSE ranges for post-training use
    "w4a4": Recipe("w4a4", Mode.STATIC, QuantSpec(bits=4, granularity=PerChannel(0)), QuantSpec(bits=4, signed=False, symmetric=False),
                   weight_observer=ObserverKind.MSE, activation_observer=ObserverKind.MSE, first_last_bits=8),
    "w2a2": Recipe("w2a2", Mode.STATIC, QuantSpec(bits=2, granularity=PerChannel(0)), QuantSpec(bits=2, signed=False, symmetric=False),
                   weight_observer=ObserverKind.MSE, activation_observer=ObserverKind.MSE, first_last_bits=8),
    "fp16": Recipe("fp16", Mode.FP16, None, None),
    "bf16": Recipe("bf16", Mode.BF16, None, None),
}

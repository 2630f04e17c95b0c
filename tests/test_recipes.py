import json

import pytest

from lowbit import PerChannel, PerGroup, PerTensor, QuantSpec
from lowbit.recipes import PRESETS, Mode, ObserverKind, Override, Recipe, load_recipe, preset


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_round_trip_through_json_and_yaml(name, tmp_path):
    recipe = preset(name)
    for suffix in (".json", ".yaml"):
        path = tmp_path / f"r{suffix}"
        recipe.save(path)
        assert load_recipe(path) == recipe


def test_preset_contents():
    assert preset("w8a8").mode is Mode.STATIC and preset("w8a8").weight.granularity == PerChannel(0)
    assert preset("w8a8-pertensor").weight.granularity == PerTensor()
    assert preset("w8-dynamic").mode is Mode.DYNAMIC
    assert preset("w4-g128").weight.granularity == PerGroup(0, 128) and preset("w4-g128").activation is None
    assert preset("w4-g128").weight_observer is ObserverKind.MSE
    assert preset("fp16").mode is Mode.FP16 and preset("bf16").weight is None


def test_overrides_apply_in_order_and_first_last_precision():
    recipe = Recipe(
        weight=QuantSpec(bits=4, granularity=PerChannel(0)),
        first_last_bits=8,
        overrides=(
            Override(include=("layers.*",), weight=QuantSpec(bits=3)),
            Override(include=("layers.2.*",), exclude=("*.shortcut*",), skip=True),
            Override(include=("layers.2.conv1",), skip=False),
        ),
    )
    assert recipe.plan("stem.0", first=True).weight.bits == 8
    assert recipe.plan("fc", last=True).activation.bits == 8
    assert recipe.plan("layers.0.conv1").weight.bits == 3
    assert recipe.plan("layers.2.conv2").skip is True
    assert recipe.plan("layers.2.shortcut.0").skip is False
    assert recipe.plan("layers.2.conv1").skip is False
    assert recipe.plan("head").weight.bits == 4


@pytest.mark.parametrize(
    "data, message",
    [
        ({"mode": "statc"}, "recipe.mode: 'statc' is not one of"),
        ({"weight": {"bits": 4, "sign": True}}, "recipe.weight: unknown key 'sign'"),
        ({"weight": {"bits": 40}}, "recipe.weight: QuantSpec.bits must be in 1..16, got 40"),
        ({"weight": {"granularity": {"kind": "per_row"}}}, "recipe.weight.granularity.kind: 'per_row'"),
        ({"overrides": [{"includes": ["fc"]}]}, "recipe.overrides[0]: unknown key 'includes'"),
        ({"mode": "dynamic", "activation": None}, "Recipe.activation is required for mode dynamic"),
        ({"first_last_bits": 1}, "first_last_bits must be None or an int in 2..16, got 1"),
        ({"activation_observer": "kl"}, "recipe.activation_observer: 'kl' is not one of"),
    ],
)
def test_bad_recipes_name_the_key_and_value(data, message):
    with pytest.raises(ValueError) as err:
        Recipe.from_dict(data)
    assert message in str(err.value)


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown recipe 'w9a9'.*w8a8"):
        load_recipe("w9a9")
    with pytest.raises(ValueError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


def test_file_with_a_typo_is_rejected_by_name(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"mode": "static", "observer": "entropy"}))
    with pytest.raises(ValueError, match="mine.json: unknown key 'observer'"):
        load_recipe(path)


def test_override_patterns_must_be_tuples():
    with pytest.raises(ValueError, match="Override.include must be a tuple of name patterns"):
        Override(include="fc")


def test_a_single_pattern_string_in_a_file_is_one_pattern():
    recipe = Recipe.from_dict({"overrides": [{"include": "layer*", "skip": True}]})
    assert recipe.overrides[0].include == ("layer*",)
    assert recipe.plan("fc").skip is False and recipe.plan("layer1").skip is True


def test_per_token_needs_dynamic_mode():
    assert preset("w8-dynamic-token").per_token is True
    with pytest.raises(ValueError, match="per_token must be a bool and needs mode dynamic"):
        Recipe(per_token=True)


def test_transforms_round_trip_and_bad_values_are_named(tmp_path):
    from lowbit.recipes import Recipe, Transforms

    recipe = Recipe(transforms=Transforms(equalize=True, relu6_to_relu=True, correct_bias="empirical"))
    path = tmp_path / "r.yaml"
    recipe.save(path)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    from lowbit.recipes import load_recipe

    assert load_recipe(path).transforms == recipe.transforms
    with pytest.raises(ValueError, match="transforms.correct_bias"):
        Transforms(correct_bias="guess")
    with pytest.raises(ValueError, match="relu6_to_relu needs equalize"):
        Transforms(relu6_to_relu=True)
    with pytest.raises(ValueError, match="unknown key 'equalise'"):
        Recipe.from_dict({"transforms": {"equalise": True}})

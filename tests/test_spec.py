import textwrap

import numpy as np
import pytest

from edge_infer.errors import SpecError
from edge_infer.model.spec import load_spec, spec_for_bare_model

GOOD = """
[model]
name = "m"
file = "m.tflite"
sha256 = "{sha}"

[input]
channels = ["a", "b"]
sample_rate_hz = 10.0
window = 8
hop = 2
offset = [1.0, 2.0]
scale = [0.5, 4]

[output]
kind = "classes"
labels = ["x", "y", "z"]

[decision]
min_confidence = 0.6

[deadline]
budget_ms = 15

[fallback]
action = "stop"
"""
SHA = "ab" * 32


def write(tmp_path, text):
    path = tmp_path / "m.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_good_spec_parses(tmp_path):
    spec = load_spec(write(tmp_path, GOOD.format(sha=SHA)))
    assert spec.model_path == (tmp_path / "m.tflite").resolve()
    assert (spec.window, spec.hop, spec.channels) == (8, 2, ["a", "b"])
    assert spec.offset.tolist() == [1.0, 2.0] and spec.scale.tolist() == [0.5, 4.0]
    assert spec.labels == ["x", "y", "z"] and spec.action_for(2) == "z"
    assert (spec.budget_ms, spec.budget_ns, spec.fallback_action, spec.min_confidence) == (15.0, 15_000_000, "stop", 0.6)


@pytest.mark.parametrize("old,new,message", [
    ('window = 8', 'window = 0', "[input].window must be a whole number at least 1"),
    ('window = 8', 'window = "8"', "[input].window must be a whole number at least 1 and at most 100000000, not '8'"),
    ('hop = 2', '', "[input].hop is missing"),
    ('channels = ["a", "b"]', 'channels = ["a", "a"]', "duplicate"),
    ('offset = [1.0, 2.0]', 'offset = [1.0]', "[input].offset must be a list of 2 numbers"),
    ('scale = [0.5, 4]', 'scale = [0.5, 0]', "[input].scale must be finite and non-zero"),
    ('kind = "classes"', 'kind = "boxes"', "[output].kind must be one of"),
    ('min_confidence = 0.6', 'min_confidence = 1.5', "[decision].min_confidence must be a number at least 0 and at most 1, not 1.5"),
    ('budget_ms = 15', 'budget_ms = -1', "[deadline].budget_ms must be a number greater than 0 and at most 86400000 (ms), not -1"),
    ('sha256 = "{sha}"', 'sha256 = "xyz"', "[model].sha256 must be 64 hex digits"),
    ('[fallback]\naction = "stop"', '', "[fallback] is missing"),
    ('budget_ms = 15', 'budget_msec = 15', "[deadline].budget_msec is not a known key"),
])
def test_bad_spec_names_the_key(tmp_path, old, new, message):
    text = GOOD.replace(old, new).format(sha=SHA)
    with pytest.raises(SpecError) as err:
        load_spec(write(tmp_path, text))
    assert message in str(err.value)


def test_not_toml_and_missing(tmp_path):
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(write(tmp_path, "[model\n"))
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "nope.toml")


def test_check_against_the_model(tmp_path):
    spec = load_spec(write(tmp_path, GOOD.format(sha=SHA)))
    spec.check_against(8, 2, 3, SHA)
    with pytest.raises(SpecError, match="sha256"):
        spec.check_against(8, 2, 3, "cd" * 32)
    with pytest.raises(SpecError, match="window is 8 but the model's input takes 16"):
        spec.check_against(16, 2, 3, SHA)
    with pytest.raises(SpecError, match="names 2 channels but the model's input takes 3"):
        spec.check_against(8, 3, 3, SHA)
    with pytest.raises(SpecError, match="names 3 outputs but the model has 4"):
        spec.check_against(8, 2, 4, SHA)


def test_bare_model_spec_defaults(tmp_path):
    spec = spec_for_bare_model(tmp_path / "x.tflite", 16, ["p", "q"], None, None, None)
    assert (spec.window, spec.hop, spec.fallback_action, spec.labels) == (16, 16, -1, None)
    assert spec.action_for(3) == 3
    assert np.all(spec.scale == 1)

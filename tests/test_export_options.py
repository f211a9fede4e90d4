"""What ``edgetl export`` checks before any work: the chain's quantizers and each quantizer's own options."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from edgetl.errors import ConfigError, UsageError
from edgetl.host.export import ExportOptions, parse_quantizer_options, plan_export


def profile(tmp_path, fmt="openvino", extra=""):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: box\nformat: {fmt}\nprecisions: [fp32, fp16, int8]\n"
                    f"fallback: [int8/ptq, int8/accuracy-control, fp32]\n{extra}")
    return path


def test_a_misspelt_chain_step_is_a_configuration_error_naming_the_quantizers_and_plugins(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("name: typo\nformat: onnx\nprecisions: [fp32, int8]\nfallback: [int8/ptqq, fp32]\n")
    with pytest.raises(ConfigError) as err:
        plan_export(ExportOptions(format="onnx", target=path))
    msg = str(err.value)
    assert msg.startswith("--target typo: fallback step 'int8/ptqq': no quantizer of target 'onnx' does "
                          "(int8, ptqq); did you mean 'int8/ptq'?")
    assert "int8/ptq (onnx-int8-ptq, plugin edgetl_builtins.onnx)" in msg and "fp32 needs none" in msg


def test_quantizer_options_come_from_the_profile_and_the_command_line(tmp_path):
    path = profile(tmp_path, extra="quantize:\n  openvino-int8-ptq: {bias_correction: fast}\n")
    plan = plan_export(ExportOptions(format="openvino", target=path))
    assert plan.quantizer_options["openvino-int8-ptq"].bias_correction == "fast"
    assert plan.quantizer_options["openvino-int8-accuracy-control"].bias_correction == "full"  # the default
    given = parse_quantizer_options(["openvino-int8-ptq.bias_correction=full"])
    assert given == {"openvino-int8-ptq": {"bias_correction": "full"}}
    plan = plan_export(ExportOptions(format="openvino", target=path, quantizer_options=given))
    assert plan.quantizer_options["openvino-int8-ptq"].bias_correction == "full"  # the command line wins


@pytest.mark.parametrize(("extra", "options", "expected"), [
    ("quantize:\n  openvino-int8-ptq: {bias_corection: fast}\n", {},
     "--target box: quantize.openvino-int8-ptq: bias_corection: unknown key 'bias_corection'; "
     "did you mean 'bias_correction'?"),
    ("", {"openvino-int8-ptq": {"bias_correction": "exact"}},
     "--quantizer-option openvino-int8-ptq: bias_correction: Input should be 'full' or 'fast' (got 'exact')"),
    ("", {"openvino-int8-pqt": {"bias_correction": "fast"}},
     "--quantizer-option openvino-int8-pqt: unknown quantizer 'openvino-int8-pqt'; did you mean "
     "'openvino-int8-ptq'"),
    ("", {"onnx-int8-ptq": {"x": 1}},
     "--quantizer-option onnx-int8-ptq: quantizer 'onnx-int8-ptq' is for target 'onnx', not 'openvino'"),
    ("", {"openvino-fp16-weights": {"x": 1}},
     "--quantizer-option openvino-fp16-weights: quantizer 'openvino-fp16-weights' (plugin edgetl_builtins.openvino) "
     "takes no options (got x)"),
])
def test_bad_quantizer_options_are_one_line_before_any_work(tmp_path, extra, options, expected):
    with pytest.raises(ConfigError) as err:
        plan_export(ExportOptions(format="openvino", target=profile(tmp_path, extra=extra), quantizer_options=options))
    assert str(err.value).startswith(expected)


def test_the_command_line_option_is_checked_before_the_run_is_read(tmp_path):
    from edgetl.cli import cli

    result = CliRunner().invoke(cli, ["export", str(tmp_path / "no-such-run"), "--format", "openvino",
                                      "--quantizer-option", "openvino-int8-ptq.bias_corection=fast"])
    assert result.exit_code != 0
    assert "unknown key 'bias_corection'; did you mean 'bias_correction'?" in result.output
    with pytest.raises(UsageError, match="expected QUANTIZER.KEY=VALUE"):
        parse_quantizer_options(["openvino-int8-ptq=fast"])

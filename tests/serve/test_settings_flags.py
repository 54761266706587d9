"""`latentspace serve`'s options are generated from ServeSettings: every setting has a flag and an
environment variable, --help lists them in panels, and a bad value is a short error, not a
traceback. run_server is replaced by a fake that keeps the settings, so nothing is served."""

from __future__ import annotations

import re
import sys
import types

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from latentspace.cli import app
from latentspace.serve.settings import API_KEYS_ENV, GROUPS, ServeSettings, env_name, flags

# For every setting, a valid value other than its default: the words given (a list setting gets
# one flag per word; a bool flag takes no word) and what ServeSettings then holds. The values are
# chosen to pass the checks across settings together (a pinned precision needs a named backend).
SAMPLES = {
    "models": (["a=dir-one", "b=builtin:all-MiniLM-L6-v2"], ["a=dir-one", "b=builtin:all-MiniLM-L6-v2"]),
    "collections": (["photos", "art=/data/art"], ["photos", "art=/data/art"]),
    "host": (["0.0.0.0"], "0.0.0.0"),
    "port": (["8123"], 8123),
    "api_keys": (["first-key-123456", "second-key-123456"], ("first-key-123456", "second-key-123456")),
    "cors_origins": (["https://a.example", "https://b.example"], ("https://a.example", "https://b.example")),
    "allow_urls": ([], True),
    "url_allowed_hosts": (["images.internal"], ("images.internal",)),
    "max_body_bytes": (["2048"], 2048),
    "max_items": (["50"], 50),
    "max_pixels": (["1000"], 1000),
    "max_queue_items": (["4096"], 4096),
    "retry_after_s": (["7"], 7),
    "url_max_bytes": (["12345"], 12345),
    "url_timeout_s": (["2.5"], 2.5),
    "url_max_redirects": (["0"], 0),
    "workers": (["3"], 3),
    "max_batch_images": (["8"], 8),
    "max_batch_tokens": (["999"], 999),
    "batch_wait_ms": (["0"], 0.0),
    "decode_threads": (["5"], 5),
    "image_runtime": (["torch"], "torch"),
    "image_precision": (["int8"], "int8"),
    "text_runtime": (["onnxruntime"], "onnxruntime"),
    "text_precision": (["int8"], "int8"),
    "runtime_cache_dir": (["/tmp/calibrations"], "/tmp/calibrations"),
}


@pytest.fixture
def served(monkeypatch) -> list:
    """The settings each `serve` run would have served with, instead of serving."""
    runs = []
    fake = types.ModuleType("latentspace.serve.run")
    fake.run_server = lambda settings, log_level="info": runs.append((settings, log_level))
    monkeypatch.setitem(sys.modules, "latentspace.serve.run", fake)
    for name in [*ServeSettings.model_fields, "api_key_file", "max_body_mb", "log_level"]:
        monkeypatch.delenv(env_name(name), raising=False)  # a developer's own settings stay out
    return runs


def _serve(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["serve", *args], env=env)


def _serve_command():
    return get_command(app).commands["serve"]


def test_every_setting_has_a_flag_an_env_var_and_a_panel():
    assert set(SAMPLES) == set(ServeSettings.model_fields), "give each new setting a sample above"
    options = {param.name: param for param in _serve_command().params}
    for name, (flag, meta) in flags().items():
        option = options[name]
        assert flag in option.opts
        assert option.rich_help_panel == GROUPS[meta.group]
        assert option.help.startswith(ServeSettings.model_fields[name].description)
        # API keys from the environment are merged with --api-key and the key file instead
        assert option.envvar == (None if name == "api_keys" else env_name(name))


def test_flags_users_already_have_still_exist():
    opts = {opt for param in _serve_command().params for opt in param.opts}
    for flag in (
        "--model",
        "-m",
        "--collection",
        "-c",
        "--host",
        "--port",
        "--workers",
        "--api-key",
        "--api-key-file",
        "--cors-origin",
        "--max-body-mb",
        "--max-items",
        "--max-pixels",
        "--max-batch-images",
        "--max-batch-tokens",
        "--max-queue-items",
        "--batch-wait-ms",
        "--decode-threads",
        "--image-runtime",
        "--image-precision",
        "--text-runtime",
        "--text-precision",
        "--runtime-cache",
        "--allow-urls",
        "--url-allowed-host",
        "--log-level",
    ):
        assert flag in opts, flag


def test_every_setting_from_flags(served):
    args = []
    for name, (words, _) in SAMPLES.items():
        flag = flags()[name][0]
        if not words:
            args.append(flag)
        for word in words:
            args += [flag, word]
    result = _serve(*args, "--log-level", "warning")
    assert result.exit_code == 0, result.output
    [(settings, log_level)] = served
    assert log_level == "warning"
    for name, (_, want) in SAMPLES.items():
        assert getattr(settings, name) == want, name


def test_every_setting_from_the_environment(served, tmp_path):
    env = {}
    for name, (words, _) in SAMPLES.items():
        # list settings are space-separated, except the keys, which stay comma-separated
        env[env_name(name)] = ",".join(words) if name == "api_keys" else " ".join(words) or "true"
    keys = tmp_path / "keys"
    keys.write_text("third-key-123456\n")
    env |= {"LATENTSPACE_API_KEY_FILE": str(keys), "LATENTSPACE_LOG_LEVEL": "debug"}
    result = _serve(env=env)
    assert result.exit_code == 0, result.output
    [(settings, log_level)] = served
    assert log_level == "debug"
    for name, (_, want) in SAMPLES.items():
        if name == "api_keys":
            want = ("third-key-123456", *want)  # the file is read before the environment
        assert getattr(settings, name) == want, name


def test_unset_settings_keep_their_defaults_and_keys_merge(served, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# ours\nfile-key-123456\n")
    result = _serve(
        "-m",
        "x",
        "-c",
        "photos",
        "--api-key",
        "flag-key-123456",
        "--api-key-file",
        str(keys),
        env={API_KEYS_ENV: "env-key-123456,flag-key-123456"},
    )
    assert result.exit_code == 0, result.output
    [(settings, log_level)] = served
    assert settings.api_keys == ("flag-key-123456", "file-key-123456", "env-key-123456")
    assert log_level == "info"
    defaults = ServeSettings(models=["x"])
    for name in set(ServeSettings.model_fields) - {"models", "collections", "api_keys"}:
        assert getattr(settings, name) == getattr(defaults, name), name


def test_max_body_in_mib_or_bytes(served):
    assert _serve("-m", "x", "--max-body-mb", "0.5").exit_code == 0
    assert served[-1][0].max_body_bytes == 2**19
    assert _serve("-m", "x", env={"LATENTSPACE_MAX_BODY_MB": "2"}).exit_code == 0
    assert served[-1][0].max_body_bytes == 2 * 2**20
    result = _serve("-m", "x", "--max-body-mb", "1", "--max-body-bytes", "4096")
    assert result.exit_code == 2 and "not both" in result.output


def test_help_lists_the_options_in_panels():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0
    for title in GROUPS.values():
        assert title in result.output
    assert "--url-timeout-s" in result.output and "LATENTSPACE_URL_TIMEOUT_S" in result.output


@pytest.mark.parametrize(
    "args, env, says",
    [
        (["--max-items", "0"], {}, "--max-items: Input should be greater than or equal to 1"),
        (["--max-items", "50", "--max-queue-items", "10"], {}, "max_queue_items (10) must be at least max_items (50)"),
        (["--url-timeout-s", "0"], {}, "--url-timeout-s: Input should be greater than 0"),
        (
            ["--image-runtime", "openvino", "--image-precision", "int8"],
            {},
            "image forwards: there is no openvino runtime at int8",
        ),
        (
            ["--max-items", "many"],
            {},
            "'--max-items' (env var: 'LATENTSPACE_MAX_ITEMS'): Input should be a valid integer",
        ),
        (["--image-runtime", "tpu"], {}, "'tpu' is not one of 'auto', 'torch', 'openvino', 'onnxruntime'"),
        ([], {"LATENTSPACE_PORT": "70000"}, "--port (LATENTSPACE_PORT): Input should be less than or equal to 65535"),
        ([], {"LATENTSPACE_BATCH_WAIT_MS": "soon"}, "'--batch-wait-ms' (env var: 'LATENTSPACE_BATCH_WAIT_MS'): Input"),
        ([], {"LATENTSPACE_ALLOW_URLS": "maybe"}, "'--allow-urls' (env var: 'LATENTSPACE_ALLOW_URLS'): Input"),
        (["--api-key", "short"], {}, "API keys must be at least 8 characters"),
    ],
)
def test_a_bad_value_is_a_short_error(served, args, env, says):
    result = _serve("-m", "x", *args, env=env)
    assert result.exit_code == 2, result.output
    # the words, whether or not typer drew a box around them and wrapped them
    assert says in " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split()), result.output
    assert "Traceback" not in result.output and not served

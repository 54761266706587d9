import pytest

from latentspace.config import ConfigError, load_config


def _write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = _write(tmp_path, "data: {train_shards: x.tar}\ntrain: {steps: 50}\n")
    cfg = load_config(p, ["train.steps=70", "optim.lr=1e-3", "vision.model_kwargs={depth: 2}"])
    assert cfg.train.steps == 70 and cfg.optim.lr == 1e-3 and cfg.vision.model_kwargs == {"depth": 2}


def test_unknown_field_is_an_error(tmp_path):
    p = _write(tmp_path, "data: {train_shards: x.tar}\ntrain: {stesp: 50}\n")
    with pytest.raises(ConfigError, match=r"train\.stesp: unknown field"):
        load_config(p)


def test_unknown_override_and_bad_value(tmp_path):
    p = _write(tmp_path, "data: {train_shards: x.tar}\n")
    with pytest.raises(ConfigError, match="unknown field"):
        load_config(p, ["vision.pooling=cls"])
    with pytest.raises(ConfigError, match="vision.pool"):
        load_config(p, ["vision.pool=median"])
    with pytest.raises(ConfigError, match="key.sub=value"):
        load_config(p, ["train.steps"])


def test_missing_file_and_missing_required(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="data"):
        load_config(_write(tmp_path, "train: {steps: 5}\n"))


def test_warmup_must_fit_in_schedule(tmp_path):
    with pytest.raises(ConfigError, match="warmup_steps"):
        load_config(_write(tmp_path, "data: {train_shards: x.tar}\ntrain: {steps: 10}\noptim: {warmup_steps: 10}\n"))


def test_packaged_quickstart_config_is_valid():
    from latentspace.quickstart import packaged_config

    cfg = load_config(packaged_config())
    assert cfg.text.path == "builtin:all-MiniLM-L6-v2"


def test_the_published_vit_b16_recipe_config_loads():
    from latentspace.quickstart import packaged_config

    cfg = load_config(packaged_config("vit_b16_published"), ["data.train_shards=/tmp/x.tar"])
    assert (cfg.vision.arch, cfg.vision.patch_size, cfg.vision.image_size, cfg.optim.lr, cfg.optim.warmup_steps) == (
        "eva02_base_patch14_224",
        16,
        224,
        1e-3,
        2000,
    )  # EVA02-B at patch 16, started from its MIM weights
    assert cfg.train.steps * cfg.train.batch_size == pytest.approx(4.5e9, rel=0.01)  # 3 epochs of ~1.5 B pairs
    assert cfg.text.trust_remote_code is False and cfg.text.caption_task == "search_query"
    import timm

    assert timm.models.is_model(cfg.vision.arch)
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.0 and cfg.recipe == "locked_text"
    assert cfg.train.precision == "bf16" and cfg.train.batch_size % cfg.train.grad_cache_chunk == 0

from __future__ import annotations

from pathlib import Path

import pytest

from pclc.config import ConfigError, TrialConfig, load_config, make_config, parse_override


def test_defaults_are_the_authors_loss_settings() -> None:
    cfg = TrialConfig()
    assert (cfg.loss, cfg.margin, cfg.lc_weight) == ("pclc", 0.995, 0.05)
    assert cfg.headline_eps in cfg.eps


def test_overrides_are_read_as_yaml_values() -> None:
    cfg = load_config(
        None, ["loss=ce", "epochs=3", "warmup_epochs=0", "eps=[0.3, 0.1]", "headline_eps=0.3", "augment=true"]
    )
    assert cfg.loss == "ce" and cfg.epochs == 3 and cfg.augment is True
    assert cfg.eps == [0.1, 0.3]  # sorted, deduplicated


def test_unknown_key_names_the_key_and_the_allowed_ones() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["marginn=0.9"])
    msg = str(err.value)
    assert "marginn" in msg and "unknown key" in msg and "margin" in msg.split("allowed keys:")[1]


@pytest.mark.parametrize(
    ("override", "field", "hint"),
    [
        ("margin=1.5", "margin", "less than or equal to 1"),
        ("margin=0", "margin", "greater than 0"),
        ("lc_weight=-0.1", "lc_weight", "greater than or equal to 0"),
        ("loss=focal", "loss", "choose one of: ce, label_smoothing, lc, pc, pclc"),
        ("epochs=many", "epochs", "integer"),
        ("eps=[0.1, 1.5]", "eps", "pixel range"),
        ("attacks=[pgd_ce, deepfool]", "attacks", "unknown attack"),
        ("headline_eps=0.25", "(config)", "not in the eps grid"),
        ("warmup_epochs=40", "(config)", "exceeds epochs"),
        ("checkpoint_every=0", "checkpoint_every = 0", "greater than or equal to 1"),
        ("compile=maybe", "compile = 'maybe'", "valid boolean"),
    ],
)
def test_bad_values_name_field_value_and_allowed(override: str, field: str, hint: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert field in msg and hint in msg


def test_a_knob_the_loss_ignores_does_not_refuse_the_run() -> None:
    # CE has no warm-up phase: the default warmup_epochs 4 must not block a 3-epoch CE run.
    cfg = load_config(None, ["loss=ce", "epochs=3"])
    assert (cfg.loss, cfg.epochs, cfg.warmup_epochs) == ("ce", 3, 4)
    with pytest.raises(ConfigError, match="warmup_epochs 4 exceeds epochs 3"):
        load_config(None, ["loss=pclc", "epochs=3"])


def test_worst_case_only_names_attacks_of_the_suite_and_leaves_one_exact() -> None:
    cfg = load_config(None, ["attacks=[fgsm, autoattack]", "worst_case_only=[autoattack]"])
    assert cfg.worst_case_only == ["autoattack"]
    with pytest.raises(ConfigError, match="worst_case_only"):
        load_config(None, ["attacks=[fgsm, autoattack]", "worst_case_only=[bim]"])
    with pytest.raises(ConfigError, match="keep at least one exact"):
        load_config(None, ["attacks=[fgsm, autoattack]", "worst_case_only=[fgsm, autoattack]"])


def test_aa_eps_must_be_on_the_eps_grid() -> None:
    assert load_config(None, ["aa_eps=[0.05, 0.1]"]).aa_eps == [0.05, 0.1]
    with pytest.raises(ConfigError, match="aa_eps"):
        load_config(None, ["aa_eps=[0.3]"])


def test_set_without_equals_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("loss")


def test_yaml_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("loss: pc\nmargin: 0.9\nepochs: 5\n")
    cfg = load_config(path, ["margin=0.8"])
    assert (cfg.loss, cfg.margin, cfg.epochs) == ("pc", 0.8, 5)


@pytest.mark.parametrize(("text", "hint"), [("- a\n- b\n", "must hold a mapping"), ("a: [1,\n", "not valid YAML")])
def test_malformed_yaml_files(tmp_path: Path, text: str, hint: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=hint):
        load_config(path)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/run.yaml")


def test_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ray Tune runs each trial in its own working directory: relative paths must not survive.
    monkeypatch.chdir(tmp_path)
    cfg = make_config({"out_dir": "out", "data_root": "~/data", "dataset": "npz:my.npz"})
    assert cfg.out_dir == str(tmp_path / "out")
    assert Path(cfg.data_root).is_absolute()
    assert cfg.dataset == f"npz:{tmp_path / 'my.npz'}"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("dataset=imagenet", "unknown dataset 'imagenet'"),
        ("model=resnet1000", "unknown model 'resnet1000'"),
        ("substitute_model=vgg99", "unknown model 'vgg99'"),
    ],
)
def test_unknown_registry_names_are_refused_with_the_choices(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value) and "choose one of" in str(err.value)

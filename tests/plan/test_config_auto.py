"""`auto` through the config machinery: which keys accept it, a whole section given as auto, and
the type checks that still apply everywhere else."""

from __future__ import annotations

import pytest

from jaxtrain.config import ConfigError
from jaxtrain.train.run_config import load_config

TINY = "tests/configs/tiny.py"


def test_mesh_section_auto_sets_every_axis_and_keeps_the_exchange():
  c = load_config(TINY, ["--config.mesh=auto", "--config.mesh.tensor=2"])
  assert [c.mesh[a] for a in ("data", "fsdp", "expert", "sequence")] == ["auto"] * 4
  assert c.mesh.tensor == 2 and c.mesh.expert_exchange == "auto"


def test_remat_and_micro_batches_accept_auto_and_policy_words_stay_words():
  c = load_config(TINY, ["--config.model.remat=auto", "--config.train.micro_batches=auto"])
  assert c.model.remat == "auto" and c.train.micro_batches == "auto"
  assert load_config(TINY, ["--config.model.remat=none"]).model.remat == "none"  # not None
  assert load_config(TINY, ["--config.model.remat=offload_input"]).model.remat == "offload_input"


def test_auto_is_refused_where_the_planner_does_not_choose():
  with pytest.raises(ConfigError, match="data does not accept 'auto'"):
    load_config(TINY, ["--config.data=auto"])
  with pytest.raises(ConfigError, match="train.lr expects float"):
    load_config(TINY, ["--config.train.lr=auto"])
  with pytest.raises(ConfigError, match="mesh.fsdp"):
    load_config(TINY, ["--config.mesh.fsdp=fast"])
  with pytest.raises(ConfigError, match="micro_batches=3 must divide global_batch=4"):
    load_config(TINY, ["--config.train.micro_batches=3"])


def test_a_config_file_may_say_auto_and_an_override_may_replace_it():
  base = {"mesh": {"fsdp": "auto", "data": "auto"}, "train": {"micro_batches": "auto"}}
  c = load_config(None, ["--config.mesh.fsdp=4", "--config.train.micro_batches=2"], base=base)
  assert c.mesh.fsdp == 4 and c.mesh.data == "auto" and c.train.micro_batches == 2


def test_the_mesh_refuses_to_be_built_before_the_planner_ran():
  from jaxtrain.parallel.mesh import axis_sizes
  c = load_config(TINY, ["--config.mesh.fsdp=auto"])
  with pytest.raises(ConfigError, match="must be resolved by the planner"):
    axis_sizes(c.mesh, 8)

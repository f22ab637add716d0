"""PEFT export / import of LoRA adapters (experts included) against `peft` itself: the exported
adapter directory loads with `PeftModel.from_pretrained` on the transformers base and gives
jaxtrain's logits; merged weights load in transformers with the same logits; importing the
directory back gives the same adapters."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from ml_collections import ConfigDict

from jaxtrain.converters import from_pretrained, save_hf
from jaxtrain.converters.errors import ConversionError
from jaxtrain.converters.hf_config import model_config_from_hf
from jaxtrain.models.adapters import LoRAParam
from jaxtrain.models.config import ModelConfig
from jaxtrain.posttrain import lora as lora_lib
from jaxtrain.posttrain import peft_io

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

FAMILIES = {
    # all-MoE layers: PEFT 0.21 adapts fused experts through `target_parameters`
    "qwen3_moe": (dict(model_type="qwen3_moe", vocab_size=96, hidden_size=32, intermediate_size=48,
                       moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=8, num_experts=4, num_experts_per_tok=2, norm_topk_prob=True),
                  "q_proj,k_proj,v_proj,o_proj,experts"),
    "qwen3": (dict(model_type="qwen3", vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=8),
              "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj"),
}


def _hf_base(tmp_path, family):
  kwargs = dict(FAMILIES[family][0])
  cfg = transformers.AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
  path = str(tmp_path / "base")
  model.save_pretrained(path)
  return path


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_adapter_loads_in_peft_with_jaxtrain_logits(tmp_path, family):
  base_dir = _hf_base(tmp_path, family)
  model = from_pretrained(base_dir)
  model_cfg = ModelConfig.from_config(model_config_from_hf(base_dir))
  adapters = lora_lib.Adapters.from_config(
      ConfigDict({"rank": 4, "alpha": 8.0, "targets": FAMILIES[family][1], "rslora": False}), model_cfg)
  adapters.attach(model, 0)
  _, ad, _ = nnx.split(model, LoRAParam, ...)
  rng = np.random.default_rng(3)  # numpy draws: no XLA program per adapter shape
  ad = jax.tree.map(lambda x: jnp.asarray(0.2 * rng.standard_normal(x.shape), x.dtype), ad)
  nnx.update(model, ad)
  ids = np.random.default_rng(0).integers(0, 96, (2, 11))
  ours = np.asarray(model(ids).logits)

  out = str(tmp_path / "adapter")
  tensors, config = peft_io.to_peft(ad, model_cfg, adapters)
  peft_io.write_adapter(out, tensors, config)
  hf = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
  peft_model = peft.PeftModel.from_pretrained(hf, out).eval()
  with torch.no_grad():
    theirs = peft_model(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
  with peft_model.disable_adapter(), torch.no_grad():
    base_logits = peft_model(torch.tensor(ids)).logits.numpy()
  assert np.max(np.abs(base_logits - theirs)) > 1e-2  # the adapters matter

  # Import: the same adapter values come back.
  flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(ad)}
  back = peft_io.read_adapter(out, ad, model_cfg, adapters)
  for p, v in flat.items():
    np.testing.assert_allclose(back[p], v, rtol=1e-6, err_msg=str(p))

  # Merged full weights load in transformers with the adapted logits.
  _, _, base = nnx.split(model, LoRAParam, ...)
  params, rest = nnx.split_state(base, nnx.Param, ...)
  merged_dir = str(tmp_path / "merged")
  save_hf(lora_lib.merge(params, ad, adapters.scale), model_cfg, merged_dir, progress=False)
  merged = transformers.AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    np.testing.assert_allclose(merged(torch.tensor(ids)).logits.numpy(), theirs, atol=1e-4, rtol=1e-4)


def test_adapter_that_does_not_fit_the_base_is_named(tmp_path):
  base_dir = _hf_base(tmp_path, "qwen3")
  model_cfg = ModelConfig.from_config(model_config_from_hf(base_dir))
  adapters = lora_lib.Adapters.from_config(
      ConfigDict({"rank": 4, "alpha": 8.0, "targets": "q_proj,v_proj", "rslora": False}), model_cfg)
  _, ad = adapters.abstract(0)
  zeros = nnx.from_flat_state([(p, np.ones(v.get_value().shape, np.float32)) for p, v in nnx.to_flat_state(ad)])
  tensors, config = peft_io.to_peft(zeros, model_cfg, adapters)
  key = next(k for k in tensors if "layers.1.self_attn.v_proj.lora_B" in k)
  tensors[key] = np.ones((7, 4), np.float32)
  peft_io.write_adapter(str(tmp_path / "bad"), tensors, config)
  with pytest.raises(ConversionError, match=r"layers\.1\.self_attn\.v_proj\.lora_B\.weight: shape \[7, 4\]"):
    peft_io.read_adapter(str(tmp_path / "bad"), ad, model_cfg, adapters)
  assert os.path.exists(str(tmp_path / "bad" / "adapter_config.json"))

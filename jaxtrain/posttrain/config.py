"""The `lora` and `preference` config sections (owned by posttrain/)."""

from __future__ import annotations

from ml_collections import ConfigDict

from jaxtrain.config import require

PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "robust", "simpo", "orpo")
REFERENCES = ("base", "precomputed")
QUANTIZE = ("none", "nf4", "int8")


def lora_defaults() -> ConfigDict:
  return ConfigDict({
      "rank": 0,  # adapter rank r; 0 = no adapters (full fine-tuning)
      "alpha": 16.0,  # adapters scale by alpha / r (alpha / sqrt(r) with rslora)
      "rslora": False,  # rank-stabilised LoRA: scale alpha / sqrt(r) instead of alpha / r
      # Comma-separated Hugging Face module names: q_proj k_proj v_proj o_proj gate_proj
      # up_proj down_proj (dense MLPs, shared experts), experts (routed experts), router.
      "targets": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,experts",
      "init_from": "",  # a PEFT adapter directory (adapter_config.json + safetensors) to continue from
      "quantize": "none",  # QLoRA: store the frozen base's projections as nf4 | int8 blocks
      "quant_block": 64,  # values per quantization block (largest even divisor of the last dim up to this)
  })


def preference_defaults() -> ConfigDict:
  return ConfigDict({
      # sigmoid (DPO) | ipo | hinge | robust (label-smoothed, unbiased) | simpo (reference-free,
      # length-normalised) | orpo (odds ratio + NLL on chosen, reference-free)
      "loss": "sigmoid",
      "beta": 0.1,  # strength of the implicit KL penalty (DPO beta; SimPO / ORPO: their beta / lambda)
      "label_smoothing": 0.0,  # sigmoid (conservative DPO) and robust: assumed label-flip rate
      "simpo_gamma": 0.5,  # SimPO target reward margin
      # orpo: the NLL term covers the chosen prompt + completion (TRL, the ORPO authors' code);
      # false: the chosen completion only. Either way a mean over the batch's chosen tokens.
      "orpo_prompt_nll": True,
      # base: the frozen starting model (with LoRA: the base with adapters disabled, no copy);
      # precomputed: the records' data.sources.*.ref_chosen_field / ref_rejected_field values.
      "reference": "base",
  })


def validate(config: ConfigDict) -> None:
  lc, pc = config.lora, config.preference
  require(lc.rank >= 0, "lora.rank", f"must be >= 0, got {lc.rank}")
  require(lc.alpha > 0, "lora.alpha", f"must be > 0, got {lc.alpha}")
  require(lc.quantize in QUANTIZE, "lora.quantize", f"{lc.quantize!r} is not one of {QUANTIZE}")
  require(lc.quantize == "none" or lc.rank > 0, "lora.quantize",
          "QLoRA quantizes the frozen base under LoRA adapters: set lora.rank > 0")
  require(lc.quant_block >= 2, "lora.quant_block", f"must be >= 2, got {lc.quant_block}")
  require(not lc.init_from or lc.rank > 0, "lora.init_from",
          "continuing from a PEFT adapter needs lora.rank > 0 (set it to the adapter's r)")
  require(pc.loss in PREFERENCE_LOSSES, "preference.loss", f"{pc.loss!r} is not one of {PREFERENCE_LOSSES}")
  require(pc.beta > 0, "preference.beta", f"must be > 0, got {pc.beta}")
  require(0 <= pc.label_smoothing < 0.5, "preference.label_smoothing",
          f"must be in [0, 0.5), got {pc.label_smoothing}")
  require(isinstance(pc.orpo_prompt_nll, bool), "preference.orpo_prompt_nll",
          f"must be true or false, got {pc.orpo_prompt_nll!r}")
  require(pc.reference in REFERENCES, "preference.reference", f"{pc.reference!r} is not one of {REFERENCES}")

"""Hugging Face <-> jaxtrain weights and configs (installed as `jaxtrain.converters`).

    model = jaxtrain.from_pretrained("path/to/hf_dir")          # or a jaxtrain checkpoint / workdir
    params = load_params(path, model_cfg, params_sharding)      # what `model.init_from` uses
    export_hf("runs/x", "out/hf", dtype="bfloat16")             # python -m jaxtrain.converters export-hf
    import_hf("path/to/hf_dir", "ckpt/")                        # python -m jaxtrain.converters import-hf

Families: qwen3, qwen3_moe, llama (rope default / linear / llama3 / yarn), mixtral, qwen2_moe,
deepseek_v3 (also Kimi-K2's kimi_k2), gpt_oss, and the vision-language qwen3_vl, qwen3_vl_moe and
internvl (Qwen3 / Qwen3-MoE language model; exports load in AutoModelForImageTextToText). Weights stream one tensor at a time from (sharded)
safetensors into their target shardings; FP8 block-scaled (DeepSeek-V3 / Kimi-K2) and MXFP4
(GPT-OSS) releases are dequantized on the fly (dequant.py); pytorch_model*.bin needs torch.
Everything else here runs without torch.
"""

from jaxtrain.converters.errors import ConversionError
from jaxtrain.converters.export import export_hf, import_hf, save_hf
from jaxtrain.converters.families import FAMILIES
from jaxtrain.converters.hf_config import from_hf, model_config_from_hf, to_hf
from jaxtrain.converters.load import from_pretrained, load_params
from jaxtrain.converters.resolve import resolve_model_section

__all__ = ["ConversionError", "FAMILIES", "export_hf", "from_hf", "from_pretrained", "import_hf", "load_params",
           "model_config_from_hf", "resolve_model_section", "save_hf", "to_hf"]

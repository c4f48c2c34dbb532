"""Named configs: `configs.get_config("SanaMS1.5_4800M_P1_D60")` or a module name (`"tiny"`)."""
import importlib

import ml_collections

# Published model names -> the module in this folder that builds their config.
NAMED_CONFIGS = {
    "tiny": "tiny",
    "tiny24": "tiny24",
    "lora": "lora",
    "SanaMS_600M_P1_D28": "sana_600m_p1_d28",
    "SanaMS_1600M_P1_D20": "sana_1600m_p1_d20",
    "SanaMS1.5_1600M_P1_D20": "sana15_1600m_p1_d20",
    "SanaMS_2400M_P1_D30": "sana_2400m_p1_d30",
    "SanaMS_3200M_P1_D40": "sana_3200m_p1_d40",
    "SanaMS1.5_4800M_P1_D60": "sana15_4800m_p1_d60",
}


def get_config(name: str = "tiny") -> ml_collections.ConfigDict:
  """Builds a fresh config by published name or module name; unknown names list the choices."""
  module = NAMED_CONFIGS.get(name, name)
  if module not in NAMED_CONFIGS.values():
    raise ValueError(f"unknown config {name!r}; choose one of {sorted(NAMED_CONFIGS)}")
  return importlib.import_module(f"sana_jax.configs.{module}").get_config()

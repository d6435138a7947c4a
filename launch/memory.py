"""Prints the per-device memory plan of a config on a machine; exit 1 when it cannot fit.

    python -m launch.memory --config=configs/grpo_math.py --preset=llama3.2-1b \
        --devices=8 --device_memory_gb=80 --config.mesh.fsdp=8 [--config.a.b=v ...]

--preset replaces the config's model section with a model preset's shape
(rl_lm.models.config.PRESETS; the config's model.remat and model.max_seq_len
stay, and --config.model.* overrides still apply on top);
--config.init.hf_dir=DIR takes it from a checkpoint's config.json, as
launch.train does. Nothing is allocated and no weights are read: the plan is
shapes only (rl_lm.train.memory). When the peak exceeds the device memory the
last line, on stderr, names the first change that makes it fit (more fsdp,
model.remat=full, more microbatches, a smaller batch).
"""

import dataclasses
import sys

from absl import app, flags
from ml_collections import config_flags

from rl_lm.models.config import PRESETS
from rl_lm.train import hf_start, memory
from rl_lm.train.report import RunError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:arg].")
_PRESET = flags.DEFINE_enum("preset", None, sorted(PRESETS), "Model preset to plan for.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Devices of the mesh.", lower_bound=1)
_MEMORY = flags.DEFINE_float("device_memory_gb", 80.0, "Memory of one device, GiB.")
flags.mark_flag_as_required("config")
# Training choices of the config, not part of a model's shape.
_KEPT = ("remat", "max_seq_len")


def apply_preset(config, preset: str, overrides: dict) -> None:
    """Sets config.model to preset's shape (the config keeps its remat and
    max_seq_len), then re-applies the model.* overrides."""
    fields = dataclasses.asdict(PRESETS[preset])
    for kept in _KEPT:
        fields.pop(kept)
    if fields["rope_scaling"] is not None:
        fields["rope_scaling"] = dict(fields["rope_scaling"])
    with config.unlocked():
        for key, value in fields.items():
            config.model[key] = value
        for path, value in overrides.items():
            if path.startswith("model."):
                config.model[path.removeprefix("model.")] = value


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    try:
        config = hf_start.resolve(_CONFIG.value, overrides)
    except RunError as e:
        sys.exit(str(e))
    if _PRESET.value:
        apply_preset(config, _PRESET.value, overrides)
    device_bytes = int(_MEMORY.value * memory.GIB)
    try:
        plan = memory.plan(config, _DEVICES.value, device_bytes)
        advice = None if plan.fits else memory.advice(config, _DEVICES.value, device_bytes)
    except ValueError as e:
        sys.exit(f"cannot plan this config: {e}")
    name = flags.FLAGS["config"].config_filename
    model = _PRESET.value or f"model dim={config.model.dim} x {config.model.num_layers} layers"
    print(f"{name}: algo {config.algo}, {model}, {_DEVICES.value} devices")
    print(memory.format_plan(plan), flush=True)
    if advice is not None:
        sys.exit(advice)


if __name__ == "__main__":
    app.run(main)

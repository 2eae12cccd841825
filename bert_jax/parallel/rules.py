"""Logical axis -> mesh axis rules. Layers speak logical names; this table alone knows the mesh.

Presets (config key mesh.rules):
  data          pure data parallelism: batch over every axis, parameters replicated;
  fsdp          parameters and optimizer state sharded over `fsdp` along the hidden size;
  fsdp_tensor   fsdp plus tensor parallelism: heads, MLP and vocabulary split over `tensor`.
"""

MESH_AXES = ("data", "fsdp", "tensor")
_BATCH = ("batch", ("data", "fsdp"))

PRESETS = {
    "data": (
        _BATCH,
    ),
    "fsdp": (
        _BATCH,
        ("embed", "fsdp"),
    ),
    "fsdp_tensor": (
        _BATCH,
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("act_heads", "tensor"),
        ("act_mlp", "tensor"),
    ),
}
# Names every preset leaves unsharded; listed so a missing rule is a visible choice.
_UNSHARDED = ("layers", "kv", "position", "type", "length", "act_embed")


def logical_axis_rules(preset: str) -> tuple:
    if preset not in PRESETS:
        raise ValueError(f"mesh.rules {preset!r} is not one of {sorted(PRESETS)}")
    named = {name for name, _ in PRESETS[preset]}
    unsharded = tuple((name, None) for name in _UNSHARDED + ("embed", "heads", "mlp", "vocab",
                                                              "act_heads", "act_mlp")
                      if name not in named)
    return PRESETS[preset] + unsharded

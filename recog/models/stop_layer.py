"""Cut a sequential model after a named layer (e.g. keep a backbone up to ``flatten``).

Only valid for models whose ``forward`` runs their direct children in registration order
(``for layer in self.children(): x = layer(x)``), like ``PPLCNet``: deleting the trailing
children is then exactly "stop after this layer". Any other model would silently compute
something else, or fail, after truncation.
"""

from paddle import nn

from recog.errors import ConfigError

_SEQUENTIAL = (nn.Sequential, nn.LayerList)


def stop_layer_names(model: nn.Layer) -> list[str]:
    """Dotted paths, in forward order, after which ``model`` can be cut: each direct child,
    and inside each ``Sequential``/``LayerList`` child its children (recursively)."""

    def walk(layer: nn.Layer, prefix: str) -> list[str]:
        names = []
        for name, child in layer.named_children():
            path = prefix + name
            names.append(path)
            if isinstance(child, _SEQUENTIAL):
                names += walk(child, path + ".")
        return names

    return walk(model, "")


def truncate_after(model: nn.Layer, path: str | None) -> nn.Layer:
    """Delete, in place, every layer that runs after the layer at ``path`` (see
    ``stop_layer_names``); returns ``model``. Removed layers' parameters leave
    ``state_dict()``/``parameters()``; kept names are unchanged. ``None``/``""``: no change.
    """
    if not path:
        return model
    valid = stop_layer_names(model)
    if path not in valid:
        raise ConfigError(
            f"stop_layer {path!r} is not a layer of {type(model).__name__}; valid names: {', '.join(valid)}"
        )
    # Walk down the path; at every level drop the siblings that follow the kept child.
    parent = model
    for name in path.split("."):
        children = dict(parent.named_children())
        names = list(children)
        for later in names[names.index(name) + 1 :]:
            delattr(parent, later)  # paddle's Layer.__delattr__ unregisters the sublayer
        parent = children[name]
    return model

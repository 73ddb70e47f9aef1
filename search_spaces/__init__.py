"""The search spaces shipped with nas_attn, found by name (``--space digits_resnet``)."""

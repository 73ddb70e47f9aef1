"""timm's entrypoint ``nas_attn_cnn``, registered on its own so that registering is cheap.

``import nas_attn`` registers it as soon as timm is imported (see :mod:`nas_attn`), which may
be in the middle of importing nas_attn's own modules; this file therefore imports nothing of
nas_attn at module level, and the builder (:func:`nas_attn.arch.create_nas_attn_cnn`) loads
on the first call.
"""
from timm.models import register_model


@register_model
def nas_attn_cnn(pretrained: bool = False, arch=None, pretrained_cfg=None, **kwargs):
    """timm entrypoint: ``timm.create_model("nas_attn_cnn", arch=ARCH)``.

    With ``pretrained=True`` the weights come from ``pretrained_cfg`` (timm fills it in when
    loading ``local-dir:DIR`` written by ``nas-attn export``); nas_attn has no hub weights.
    """
    from .arch import create_nas_attn_cnn
    return create_nas_attn_cnn(pretrained, arch=arch, pretrained_cfg=pretrained_cfg, **kwargs)

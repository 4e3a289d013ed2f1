"""The model backbones and layers a config may name, without importing torch.

:mod:`modelfit.backbone` builds them (its ``REGISTRY`` holds exactly :data:`BACKBONES`);
checks that run before anything heavy (``rig.loop.preflight`` in the live rig's controller)
read the names here.
"""
BACKBONES = ("resnet50", "resnet18", "tiny", "efficientnet-lite0")
LAYERS = ("layer3", "layer4.0", "layer4")

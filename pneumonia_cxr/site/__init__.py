"""A model fitted to a new site's own labelled images: `calibrate` (its operating point) and
`adapt` (fine-tune, calibrate, check on the other half).

Only constants live here, so the CLI can offer them without importing torch.
"""

from typing import Any

MIN_IMAGES_PER_CLASS = 30
"""Below this, a class's sensitivity or specificity has a CI about +-15 points or wider."""

MIN_SITE_AUC = 0.75
"""The site verdict: a new threshold can trade sensitivity for specificity, not add
separation. The model is called useful at a site only when the lower end of the 95% CI of its
site ROC AUC reaches this (CheXNet's own-hospital AUC for pneumonia was 0.768; below it a
recalibrated threshold promises a sensitivity bought with most of the specificity)."""

ADAPT_RECIPE: dict[str, Any] = {
    "stage1_epochs": 1,
    "stage2_epochs": 3,
    "stage1_lr": 1e-4,
    "stage2_lr": 3e-5,
    "unfreeze_layers": -1,
}
"""Few epochs at a low rate on every layer: a few hundred films move the whole network a little
toward the site without forgetting what it learned (measured by hand on another hospital's
485 films: held-out AUC 0.49 -> 0.78 in 2 minutes on 2 cores, issue 25). `adapt` trains with
it and `calibrate`'s suggestion describes it."""

"""Writers of tiny fake datasets in each real on-disk format, for the registry tests.

They live in ``pipeline.data.synthetic`` (the ``profile=tiny`` runs write their data with the
same code); this module keeps the tests' import path.
"""

from pipeline.data.synthetic import *  # noqa: F401,F403
from pipeline.data.synthetic import (  # noqa: F401  (names the star import leaves out)
    CARS_CLASSES,
    CUB_CLASSES,
    DOMAINNET_ALL,
    DOMAINNET_CLASSES,
    DTD_CLASSES,
    EUROSAT_FOLDERS,
    GTSRB_CLASS_IDS,
    IMAGE_SIZE,
    IMAGENET_R_CLASSES,
    IMAGENET_R_RENDITIONS,
    IMAGENET_R_SIZES,
    NEEDS_SCIPY,
    RESISC45_CLASSES,
    SUN397_CLASSES,
    WRITERS,
    Expected,
    _image,
    _idx,
)

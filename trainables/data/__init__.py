"""Data for trials: the shared in-memory type, synthetic default data and the XTD10 loader.

* :class:`ImageCaptionSet` / :class:`DataError` (:mod:`trainables.data.types`)
* :func:`generate_synthetic`, :func:`load_synthetic` (:mod:`trainables.data.synthetic`)
* :func:`load_xtd`, :func:`write_xtd` (:mod:`trainables.data.xtd`)
"""

from trainables.data.types import DataError, ImageCaptionSet
from trainables.data.xtd import load_xtd, write_xtd
from trainables.data.synthetic import generate_synthetic, load_synthetic, synthetic_cache_dir

__all__ = ["DataError", "ImageCaptionSet", "load_xtd", "write_xtd", "generate_synthetic", "load_synthetic",
           "synthetic_cache_dir"]

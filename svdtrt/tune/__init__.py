"""``svdtrt tune``: the fastest settings that keep a quality floor, found on the user's own images
and weights, and stored in the bundle as named profiles (docs/tuning.md; docs/architecture.md,
"Tuning").

:mod:`.space` is what is searched (candidates, floors); :mod:`.cost` prices a candidate before it
runs; :mod:`.search` runs the search (:func:`run_tune`) over the ``--out`` folder of :mod:`.folder`;
:mod:`.results` and :mod:`.report` are what it found; :mod:`.profiles` stores the answers in the
bundle.
"""

from .profiles import apply_profiles, profiles_from, refuse_replacing
from .results import TuneImage, TuneResults
from .search import TuneJob, run_tune
from .space import candidates, floors

__all__ = ["TuneImage", "TuneJob", "TuneResults", "apply_profiles", "candidates", "floors", "profiles_from",
           "refuse_replacing", "run_tune"]

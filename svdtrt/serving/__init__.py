"""Clips beyond one process, on Ray (docs/serving.md): ``svdtrt serve`` (a Ray Serve application,
:mod:`.app`) and ``svdtrt batch`` (Ray actors over a folder of images, :mod:`.batch`), both over
one warm backend per replica or worker (:mod:`.worker`), with the options both check before Ray
starts (:mod:`.preflight`).

This layer sits above the runtime and below the CLI (docs/architecture.md, "Layout"): the runtime
never imports it, and only it imports Ray, which the ``serve`` extra installs
(``pip install 'svdtrt[serve]'``).
"""

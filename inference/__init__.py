"""labseg's segmentation library: no Django, importable and testable without settings.

``pipeline`` (scan in, labels, volumes and lesions out), ``registry`` (self-describing model
folders under ``models/``), ``structures`` (the one canonical label table), ``metrics``,
``phantom`` (synthetic mice with ground truth), ``training`` (PyTorch, training requirements only)
and a command line (``python -m inference``). The Django app that runs it for labs is
``segmentation`` (app label ``inference``).
"""

"""Course tooling, not chapter content: the notebook runner (``run``), HTML/README rendering (``render``),
student versions and grading (``coursework``), output stripping (``nbtools``) and the smoke check
(``smoke``). Each is a command: ``python -m tlutils.course.<name> --help``.
"""

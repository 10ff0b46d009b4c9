"""Offline commands, never loaded by the daemon: ``voxd model`` (modelfetch),
``voxd quantize`` (quantize), ``voxd bench`` (bench), ``voxd dev make-model``
(devmodel). Each is imported by the command that runs it (voxd/cli.py), so
``voxd run`` starts without them (tests/test_cli.py checks).
"""

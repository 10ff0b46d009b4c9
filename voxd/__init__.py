"""voxd: a local streaming speech-to-text daemon built on Voxtral Realtime."""

__version__ = "0.1.0"

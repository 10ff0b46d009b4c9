"""The Wyoming speech-to-text server for Home Assistant Assist ([wyoming] in the config).

Not a sink: a second way in. Home Assistant sends a voice command's audio over
TCP and gets its transcript back on the same connection, on a stream of its
own of the daemon's one engine; the microphone pipeline and its events are not
involved. ``server`` (the handler and the TCP server), ``wire`` (bounded
reading of the protocol's frames), ``zeroconf`` (the mDNS advertisement).
"""

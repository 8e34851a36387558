"""pyresponder: a multi-worker NTP responder fed by a local chronyd."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pyresponder")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

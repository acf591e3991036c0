"""difusor: a Kubernetes operator for official difusores of Mexican PREP election results."""

__version__ = "0.1.0"

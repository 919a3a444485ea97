"""pendo-planhat: exactly-once sync of Pendo product usage into Planhat."""

__version__ = "0.1.0"

"""bidopt: a bid-optimisation platform for a demand-side ad buyer, built on Ray."""

__version__ = "0.1.0"

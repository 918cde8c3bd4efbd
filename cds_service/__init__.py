"""leg-cramp-cds: a CDS Hooks 2.0 service for leg-cramp risk, venous workup and DVT red flags."""

__version__ = "0.1.0"

"""The ``cramp-cds`` command line (click): serve, rules, keys, and the integration commands."""

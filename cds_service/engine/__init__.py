"""One hook call, with no web framework: prefetch -> chart -> facts -> rules -> cards, and the card-ledger protocol."""

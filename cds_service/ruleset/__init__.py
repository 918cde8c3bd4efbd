"""The rule set: its schema and loading, the compiled index, its checks, value-set files and the card ids."""

"""CDS Hooks wire models (pydantic): hook requests and their contexts, cards and responses, feedback."""

"""CDS-client authentication: JWT verification against trusted clients' keys, and keys for testing."""

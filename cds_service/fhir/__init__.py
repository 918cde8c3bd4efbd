"""The FHIR HTTP client: reads from the client's FHIR server (prefetch), the connections it keeps, paging over a server."""

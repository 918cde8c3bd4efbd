"""Helpers the tests share (hook requests, apps, FHIR and CDS servers, signed clients, feedback), imported
as ``from support.x import ...``; fixtures stay in tests/conftest.py."""

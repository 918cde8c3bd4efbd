"""The hand-worked FHIR patients with their expected cards (README.md here).

Shipped with the package (data only) so that the admin console's Try it and dry runs can offer them in an
installed service or the Docker image, not only in a source checkout.
"""

"""Tools around the service: population runs and simulation, explain, reports, the card HTML page."""

"""The load benchmark's baseline: the same stack as the service (Flask under gunicorn, with the
service's gunicorn settings from cds_service/serve/gunicorn_conf.py and the same JSON library) doing the least
a CDS service can do: parse the request body and return one fixed card. Benchmarks only; never shipped.

    python bench/baseline_app.py [--port 8090] [--workers N] [--threads N]
"""

from __future__ import annotations

import argparse

import orjson
from flask import Flask, Response, request

BASELINE_PATH = "/baseline"
FIXED_CARDS = orjson.dumps({"cards": [{
    "uuid": "00000000-0000-4000-8000-000000000000",
    "summary": "Baseline card",
    "indicator": "info",
    "source": {"label": "bench baseline"},
}]})


def create_app() -> Flask:
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status":"ok"}', mimetype="application/json")

    @app.post(BASELINE_PATH)
    def baseline() -> Response:
        body = orjson.loads(request.get_data(cache=False))
        if not isinstance(body, dict):
            return Response(b"{}", status=400, mimetype="application/json")
        return Response(FIXED_CARDS, mimetype="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    from cds_service.cli.main import run_gunicorn
    from cds_service.serve import gunicorn_conf

    options = gunicorn_conf.build()
    options["bind"] = [f"{args.host}:{args.port}"]
    options["proc_name"] = "cramp-baseline"
    if args.workers:
        options["workers"] = args.workers
    if args.threads:
        options["threads"] = args.threads
    run_gunicorn(create_app, options)


if __name__ == "__main__":
    main()

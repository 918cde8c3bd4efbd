"""The gunicorn process: its configuration, its worker class and the WSGI entry point."""

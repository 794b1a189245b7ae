"""The Docker sandbox image's default tag, importable without docker-py (start-up time)."""

DEFAULT_IMAGE = "reprodesk-sandbox:latest"

"""The search service: FastAPI REST API, web page and Python client."""

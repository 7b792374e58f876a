"""The HTTP API (aiohttp): one module per resource, problem+json errors, bearer auth."""

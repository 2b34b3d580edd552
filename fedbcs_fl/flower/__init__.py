"""FedBCS on Flower: the same algorithm objects as the simulator, across machines.

``server_app:app`` and ``client_app:app`` are the components named in pyproject.toml's
``[tool.flwr.app]``; ``local`` runs a whole deployment on loopback
(``fedbcs flower-local``). See docs/deployment.md.
"""

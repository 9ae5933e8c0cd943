"""The Flower app of chapter 08 for the deployment engine: ``flwr run medgan_utils/flowerapp``
loads ``medgan_utils.flower_apps:server_app`` and ``:client_app`` (see
``medgan_utils/flowerapp/pyproject.toml``). They read their settings
(:class:`medgan_utils.federated.FederatedConfig`'s fields, dashed) from Flower's run config.

A module of its own because Flower resolves these names when it loads the app, and building them
imports flwr, which :mod:`medgan_utils.federated` (and the ``medgan`` CLI) must not need.
"""

from .federated import make_apps

server_app, client_app = make_apps()

__all__ = ["client_app", "server_app"]

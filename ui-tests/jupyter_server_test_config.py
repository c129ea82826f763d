"""The Jupyter server of the UI tests (Galata): `jlpm start` in ui-tests/ runs it, and playwright.config.js
starts it so. Galata's settings (no token, no XSRF check, a temporary root_dir, its helper extension), on
127.0.0.1:8899 instead of 8888, and as root too (this project's machines run as root).

Never use this configuration in production: it removes all security protections.
"""

from jupyterlab.galata import configure_jupyter_server

c = get_config()  # noqa: F821 (Jupyter's config loader provides get_config)
configure_jupyter_server(c)

c.ServerApp.ip = "127.0.0.1"
c.ServerApp.port = 8899
c.ServerApp.allow_root = True
# Uncomment to set the server's log level to debug:
# c.ServerApp.log_level = "DEBUG"

"""
The HTTP API (Klein): status, metrics, routes, messages and their events, and the live page
(the static files beside this module).
"""

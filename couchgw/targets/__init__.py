"""
Targets: the systems messages go to.  The target interface (L{couchgw.targets.interfaces}, which
route-kind plugins implement), the route configuration, the SOAP and HTTP kinds, and the
validation at the door generated from the routes.
"""

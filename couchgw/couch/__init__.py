"""
CouchDB: the client (L{couchgw.couch.client}) and its errors, the changes feed and its framing,
writes gathered into C{_bulk_docs}, and the design documents.
"""

from twisted.application.service import ServiceMaker

couchgw = ServiceMaker(
    "couchgw",
    "couchgw.tap",
    "Asynchronous, persistent gateway from CouchDB message documents to slow SOAP services.",
    "couchgw",
)

function (doc) {
  if (doc.type === "message") emit(doc.status == null ? "new" : doc.status, null);
}

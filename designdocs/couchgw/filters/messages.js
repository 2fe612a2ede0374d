function (doc, req) {
  // Every message: the feed that status events for subscribers come from.
  return doc.type === "message";
}

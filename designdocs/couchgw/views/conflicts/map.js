function (doc) {
  // Messages with conflicting revisions (written through different cluster nodes, or
  // replicated): the gateway merges them into the winner and deletes the losers.
  if (doc.type === "message" && doc._conflicts) emit(doc._conflicts.length, null);
}

"""Family trees of a collection: which model derives from which, the kind of each edge, and its direction."""

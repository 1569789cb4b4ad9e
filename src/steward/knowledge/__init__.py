"""Knowledge: documents, their chunks and embeddings, and search over them."""

"""The preprocessing stages: media I/O, frame sampling, faces, depth maps, embeddings."""

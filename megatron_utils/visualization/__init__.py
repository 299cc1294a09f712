"""Pictures: annotated media, evaluation figures, notebook views."""

"""(placeholder: the embeddings handler is being built)"""

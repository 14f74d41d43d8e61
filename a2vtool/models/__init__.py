"""Model wrappers and builders: AST encoder, text targets, adapters, generators."""

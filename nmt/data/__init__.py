"""Data preparation: load a parallel corpus, clean it, learn SentencePiece, cache encoded Arrow."""

from nmt.data.prepare import PreparedData, format_stats, prepare

__all__ = ["PreparedData", "format_stats", "prepare"]

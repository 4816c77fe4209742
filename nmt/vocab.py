"""The special-token ids that tokenizers, models, batching and search all agree on.

They live apart from `nmt.tokenizer` so that models and search can use them without importing
SentencePiece; `nmt.tokenizer` trains every model with exactly these ids.
"""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3

"""The decode loops: one function for autoregressive and speculative decoding of one sequence
(decode.py, the model to read first), the batched loop (batch_decode.py), beam search as a
baseline (beam_search.py), verification of drafts against the target (verify.py) and when a
generation stops (stopping.py).

May import: proposers, length, models, stats. Never a builder, the experiment or report layer."""
